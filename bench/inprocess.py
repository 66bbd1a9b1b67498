"""The in-process limit of batch scoring: read CSV chunks, run ONNX, write CSV; no HTTP, no checks.

``python -m bench.inprocess MODEL.onnx META.json IN.csv OUT.csv [WARMUP.csv]`` prints one
JSON line with the rows and the seconds spent scoring IN.csv (interpreter start, imports
and a warm-up pass over WARMUP.csv excluded, as the API server is warm too).
The output has the API's columns (inputs, ``prediction``, ``probability``,
``prob_<class>``, ``model_version``), so the two write the same bytes' worth.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pa_compute
import pyarrow.csv as pa_csv

from api.runtime import load_model
from bench.common import load_exported_model

BLOCK_BYTES = 4 << 20


def score_file(model: Any, source: Path, target: Path) -> int:
    """Score every row of ``source`` into ``target``; returns the row count.

    The same data flow as the API's batch at its leanest: cells read as Arrow text, the
    features cast to numbers in Arrow, labels mapped to columns by hashing, the output
    assembled and written by Arrow; no validation, no temporary file, no HTTP.
    """
    with open(source, encoding="utf-8-sig", newline="") as handle:
        names = next(csv.reader(handle))
    keys = [f"c{i}" for i in range(len(names))]
    reader = pa_csv.open_csv(
        source,
        read_options=pa_csv.ReadOptions(
            column_names=keys, skip_rows=1, block_size=BLOCK_BYTES, use_threads=False
        ),
        convert_options=pa_csv.ConvertOptions(column_types={k: pa.string() for k in keys}),
    )
    position = {name: i for i, name in enumerate(names)}
    lookup = model.column_of
    rows = 0
    writer = None
    try:
        for batch in reader:
            matrix = np.column_stack(
                [
                    pa_compute.cast(batch.column(position[name]), pa.float32()).to_numpy()
                    for name in model.schema.features
                ]
            )
            scored = model.predict(matrix)
            codes, found = pd.factorize(np.asarray(scored.labels, dtype=object))
            chosen = np.array([lookup[label] for label in found], dtype=np.intp)[codes]
            probabilities = scored.probabilities.astype(np.float32, copy=False)
            columns = dict(zip(names, batch.columns, strict=False))
            columns["prediction"] = pa.array(scored.labels, type=pa.string())
            columns["probability"] = pa.array(probabilities[np.arange(len(chosen)), chosen])
            for index, name in enumerate(model.classes):
                columns[f"prob_{name}"] = pa.array(probabilities[:, index])
            columns["model_version"] = pa.array(np.full(len(chosen), model.version, dtype=np.int64))
            table = pa.table(columns)
            if writer is None:
                writer = pa_csv.CSVWriter(
                    str(target),
                    table.schema,
                    write_options=pa_csv.WriteOptions(quoting_style="needed"),
                )
            writer.write_table(table)
            rows += len(chosen)
    finally:
        if writer is not None:
            writer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Load the model described by META.json, score IN.csv into OUT.csv, print the timing."""
    paths = [Path(a) for a in (argv or sys.argv[1:])]
    onnx_path, meta_path, source, target = paths[:4]
    model = load_exported_model(meta_path, onnx_path, load_model)
    if len(paths) > 4:
        score_file(model, paths[4], target.with_suffix(".warmup.csv"))
    started = time.perf_counter()
    rows = score_file(model, source, target)
    print(json.dumps({"rows": rows, "score_s": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
