"""The in-process limit of batch scoring: read CSV chunks, run ONNX, write CSV; no HTTP, no checks.

``python -m bench.inprocess MODEL.onnx META.json IN.csv OUT.csv [WARMUP.csv]`` prints one
JSON line with the rows and the seconds spent scoring IN.csv (interpreter start, imports
and a warm-up pass over WARMUP.csv excluded, as the API server is warm too).
The output has the API's columns (inputs, ``prediction``, ``probability``,
``prob_<class>``, ``model_version``), so the two write the same bytes' worth.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from api.runtime import load_model

BLOCK_BYTES = 8 << 20


def score_file(model: Any, source: Path, target: Path) -> int:
    """Score every row of ``source`` into ``target``; returns the row count."""
    features = list(model.schema.features)
    reader = pa_csv.open_csv(source, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES))
    rows = 0
    writer = None
    column_of = model.column_of
    try:
        for batch in reader:
            matrix = np.column_stack([batch.column(name).to_numpy(zero_copy_only=False)
                                      for name in features]).astype(np.float32)
            scored = model.predict(matrix)
            labels = np.asarray(scored.labels, dtype=object)
            chosen = np.fromiter((column_of[label] for label in scored.labels), dtype=np.intp,
                                 count=len(labels))
            probabilities = scored.probabilities.astype(np.float32)
            columns = {name: batch.column(name) for name in batch.schema.names}
            columns["prediction"] = pa.array(labels, type=pa.string())
            columns["probability"] = pa.array(probabilities[np.arange(len(chosen)), chosen])
            for index, name in enumerate(model.classes):
                columns[f"prob_{name}"] = pa.array(probabilities[:, index])
            columns["model_version"] = pa.array(np.full(len(labels), model.version))
            table = pa.table(columns)
            if writer is None:
                writer = pa_csv.CSVWriter(str(target), table.schema, write_options=pa_csv.WriteOptions(
                    quoting_style="needed"))
            writer.write_table(table)
            rows += len(labels)
    finally:
        if writer is not None:
            writer.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Load the model described by META.json, score IN.csv into OUT.csv, print the timing."""
    paths = [Path(a) for a in (argv or sys.argv[1:])]
    onnx_path, meta_path, source, target = paths[:4]
    meta = json.loads(meta_path.read_text())
    model = load_model(meta["name"], meta["version"], meta.get("run_id"), meta["classes"],
                       meta["input_schema"], onnx_path.read_bytes(), onnx_io=meta.get("onnx_io"))
    if len(paths) > 4:
        score_file(model, paths[4], target.with_suffix(".warmup.csv"))
    started = time.perf_counter()
    rows = score_file(model, source, target)
    print(json.dumps({"rows": rows, "score_s": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
