"""Score a CSV of any size in chunks, keeping memory flat, and save the result atomically.

The upload is read through Arrow's CSV reader in chunks of about ``batch_chunk_rows``
rows, every cell kept as text (input columns pass through unchanged, nothing becomes a
Python object on the clean path); each chunk is validated, scored and appended to a
temporary file beside the outputs through Arrow's CSV writer. Only when the
whole file went through is the temporary file renamed to the per-job file and linked
as ``predicciones.csv``, so a failed batch leaves no half-written result.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import compute as pa_compute
from pyarrow import csv as pa_csv

from api.runtime import LoadedModel
from api.validation import FLOAT32_MAX, check_width, invalid, missing_columns, sniff_delimiter

log = logging.getLogger(__name__)

LATEST_NAME = "predicciones.csv"
MAX_DETAILS = 100  # problems listed in one 400; the message gives the total
_PEEK_BYTES = 64 * 1024
# Arrow reads blocks of bytes, not rows: aim at batch_chunk_rows rows of a typical width
# (six numbers with two decimals are ~36 bytes). A block costs several times its size
# while it is scored and written: at 64 bytes per row a 1M-row upload peaked ~50 MB higher.
_BYTES_PER_ROW = 32
_MIN_BLOCK, _MAX_BLOCK = 1 << 20, 64 << 20


@dataclass
class BatchResult:
    """Where the result was saved and what it holds."""

    job_id: str
    job_path: Path
    latest_path: Path
    rows: int
    predicted: int
    errors: int
    counts: dict[str, int]
    duration_s: float
    model: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON answer of ``?format=json``."""
        return {
            "job_id": self.job_id,
            "saved_path": str(self.latest_path),
            "job_path": str(self.job_path),
            "rows": self.rows,
            "predicted": self.predicted,
            "errors": self.errors,
            "counts": self.counts,
            "duration_s": round(self.duration_s, 3),
            "model": self.model,
        }


class _Prefixed(io.RawIOBase):
    """A read-once stream with bytes already peeked put back in front."""

    def __init__(self, prefix: bytes, rest: IO[bytes]):
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Exact(io.RawIOBase):
    """The request body: ending before its Content-Length is an error, not the end of the file.

    Behind gunicorn a client gone half-way looks like a short body; without this check
    the rows received so far would be saved as if they were the whole upload.
    """

    def __init__(self, stream: IO[bytes], expected: int):
        self._stream = stream
        self._expected = expected
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        if not data and self._seen < self._expected:
            raise invalid(
                f"the upload ended after {self._seen} of the {self._expected} bytes "
                "its Content-Length announced (client disconnected?); nothing saved"
            )
        self._seen += len(data)
        buffer[: len(data)] = data
        return len(data)


def _open_csv(stream: IO[bytes]) -> tuple[IO[bytes], str, list[str]]:
    """The stream ready for the reader, its delimiter (sniffed) and the header's names."""
    head = stream.read(_PEEK_BYTES)
    while b"\n" not in head:
        more = stream.read(_PEEK_BYTES)
        if not more:
            break
        head += more
    try:
        first_line = head.split(b"\n", 1)[0].decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid("line 1: the CSV is not UTF-8 text") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise invalid("the CSV file is empty: expected a header row and data rows")
    delimiter = sniff_delimiter(first_line)
    check_width(first_line, delimiter)
    names = next(csv.reader([first_line], delimiter=delimiter), [])
    return io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 20), delimiter, names


class _Chunk:
    """One block of rows as Arrow text columns; a pandas view only when a cell is bad."""

    def __init__(self, batch: pa.RecordBatch, names: list[str]):
        self.batch = batch
        self.index = {name: i for i, name in enumerate(names)}
        self._frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return self.batch.num_rows

    def column(self, name: str) -> pa.Array:
        return self.batch.column(self.index[name])

    def __getitem__(self, name: str) -> pd.Series:
        """The column as pandas text (slow path: error details, ``on_error=skip``)."""
        if self._frame is None:
            self._frame = pd.DataFrame(
                {n: self.batch.column(i).to_pandas() for n, i in self.index.items()}
            )
        return self._frame[name]


def _parse_features(
    chunk: _Chunk, features: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]]:
    """float32 matrix, per-row ok mask, and per column the mask of bad cells."""
    matrix = np.empty((len(chunk), len(features)), dtype=np.float32)
    ok = np.ones(len(chunk), dtype=bool)
    bad_by_column: list[tuple[str, np.ndarray]] = []
    for col, name in enumerate(features):
        try:  # fast path: a clean column converts in one vectorised cast, in Arrow
            values = pa_compute.cast(chunk.column(name), pa.float64()).to_numpy(
                zero_copy_only=False
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # some cell is not a plain number: find which, cell by cell
            values = pd.to_numeric(chunk[name].str.strip(), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
        # Beyond float32's range a value would reach the model as infinity.
        bad = ~(np.abs(values) <= FLOAT32_MAX)
        if bad.any():
            bad_by_column.append((name, bad))
            ok &= ~bad
            values = np.where(bad, 0.0, values)
        matrix[:, col] = values
    return matrix, ok, bad_by_column


def _problem(value: str) -> str:
    text = value.strip()
    if text == "":
        return "empty"
    if text.lower() in ("nan", "+nan", "-nan"):
        return "NaN"
    if text.lower().lstrip("+-") in ("inf", "infinity"):
        return "infinite"
    try:
        float(text)
    except ValueError:
        return f"not a number ({text[:40]!r})"
    return f"beyond the model's float32 range (|x| <= {FLOAT32_MAX:.3g})"


def run_batch(
    stream: IO[bytes],
    model: LoadedModel,
    output_dir: Path,
    chunk_rows: int,
    on_error: str = "fail",
    expected_bytes: int | None = None,
) -> BatchResult:
    """Score every row of the CSV ``stream`` with ``model`` and save the result.

    Args:
        on_error: ``"fail"`` (a bad cell is a 400 naming line and column) or ``"skip"``
            (the row is kept with an ``error`` column and no prediction).

    Raises:
        RegistryError: INVALID_INPUT for an empty file, missing columns, a malformed
            CSV or (unless skipping) a bad cell.
    """
    started = time.perf_counter()
    features = model.schema.features
    classes = model.classes
    prob_columns = [f"prob_{c}" for c in classes]
    reserved = {"prediction", "probability", "model_version", "error", *prob_columns}
    # Absolute, because Flask's send_file reads relative paths from the app's package.
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    job_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    job_path = output_dir / f"predicciones-{job_id}.csv"
    latest_path = output_dir / LATEST_NAME
    handle = tempfile.NamedTemporaryFile(
        "wb", dir=output_dir, prefix=".batch-", suffix=".tmp", delete=False
    )
    tmp_path = Path(handle.name)
    rows = predicted = 0
    counts = np.zeros(len(classes), dtype=np.int64)
    column_of = model.column_of
    writer: _ChunkWriter | None = None
    try:
        with handle:
            if expected_bytes is not None:
                stream = _Exact(stream, expected_bytes)
            source, delimiter, raw_names = _open_csv(stream)
            names = [name.strip() for name in raw_names]
            absent = missing_columns(names, model.schema)
            if absent:
                raise invalid(
                    f"line 1: missing required column(s): {', '.join(absent)}",
                    [{"line": 1, "field": n, "problem": "missing column"} for n in absent],
                )
            taken = [c for c in names if c in reserved]
            if taken:
                raise invalid(
                    f"line 1: column(s) {', '.join(taken)} would be overwritten "
                    "by the output; rename or drop them",
                    [{"line": 1, "field": n, "problem": "reserved column"} for n in taken],
                )
            for batch in _read(source, delimiter, len(names), chunk_rows):
                chunk = _Chunk(batch, names)
                matrix, ok, bad_by_column = _parse_features(chunk, features)
                if bad_by_column and on_error != "skip":
                    _raise_bad_cells(chunk, bad_by_column, first_line=rows + 2)
                n = len(chunk)
                labels = np.full(n, "", dtype=object)
                # float32 as the model computes them: written in their shortest exact form
                probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
                probability = np.full(n, np.nan, dtype=np.float32)
                if ok.any():
                    scored = model.predict(matrix[ok] if not ok.all() else matrix)
                    # hash each label once (np.unique would sort a million strings)
                    codes, found = pd.factorize(np.asarray(scored.labels, dtype=object))
                    chosen = np.array([column_of.get(label, 0) for label in found], dtype=np.intp)[
                        codes
                    ]
                    counts += np.bincount(chosen, minlength=len(classes))
                    labels[ok] = scored.labels
                    probs[ok] = scored.probabilities
                    probability[ok] = probs[ok][np.arange(len(chosen)), chosen]
                    predicted += len(chosen)
                columns = dict(zip(names, batch.columns, strict=False))
                columns["prediction"] = pa.array(labels, type=pa.string())
                columns["probability"] = pa.array(probability, from_pandas=True)
                for name, values in zip(prob_columns, probs.T, strict=False):
                    columns[name] = pa.array(values, from_pandas=True)
                columns["model_version"] = pa.array(np.full(n, model.version, dtype=np.int64))
                if on_error == "skip":
                    columns["error"] = pa.array(
                        _row_errors(chunk, bad_by_column, n), type=pa.string()
                    )
                writer = writer or _ChunkWriter(handle)
                writer.write(pa.table(columns))
                rows += n
            if writer is not None:
                writer.close()
        if rows == 0:
            raise invalid("the CSV has a header but no data rows")
        os.replace(tmp_path, job_path)
        _publish_latest(job_path, latest_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    duration = time.perf_counter() - started
    log.info(
        "batch %s: %d rows (%d predicted) with %s v%s in %.2fs",
        job_id,
        rows,
        predicted,
        model.name,
        model.version,
        duration,
    )
    return BatchResult(
        job_id,
        job_path,
        latest_path,
        rows,
        predicted,
        rows - predicted,
        {c: int(counts[i]) for i, c in enumerate(classes)},
        duration,
        model.identity(),
    )


class _ChunkWriter:
    """Append chunks to one CSV through Arrow's writer (tens of times faster than to_csv).

    Text cells are written quoted, numbers bare, missing values (no prediction) empty.
    """

    def __init__(self, sink: IO[bytes]):
        self._sink = sink
        self._writer: pa_csv.CSVWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            # Fix the column types on the first chunk so every chunk writes alike.
            self._schema = pa.schema(
                [
                    pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type)
                    for f in table.schema
                ]
            )
            self._writer = pa_csv.CSVWriter(
                self._sink, self._schema, write_options=pa_csv.WriteOptions(quoting_style="needed")
            )
        self._writer.write_table(table.cast(self._schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _read(source: IO[bytes], delimiter: str, width: int, chunk_rows: int) -> Any:
    """Yield record batches of text cells, turning Arrow's parse errors into a 400 naming the line.

    One reader thread: measured faster than Arrow's thread pool on 1M rows here, and
    only then does Arrow know the line number of a malformed row.
    """
    block = min(max(chunk_rows * _BYTES_PER_ROW, _MIN_BLOCK), _MAX_BLOCK)
    # Positional names: the header (already read) may repeat or blank a name.
    keys = [f"c{i}" for i in range(width)]
    try:
        reader = pa_csv.open_csv(
            source,
            read_options=pa_csv.ReadOptions(
                column_names=keys, skip_rows=1, block_size=block, use_threads=False
            ),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=pa_csv.ConvertOptions(
                column_types={k: pa.string() for k in keys},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            if batch.num_rows:
                yield batch
    except pa.ArrowInvalid as exc:
        detail = str(exc)
        if "UTF8" in detail:
            raise invalid(f"the CSV is not UTF-8 text ({detail})") from None
        detail = detail.replace("CSV parse error: ", "").replace("Row #", "line ")
        raise invalid(f"malformed CSV: {detail[:300]}") from None


def _raise_bad_cells(
    chunk: pd.DataFrame, bad_by_column: list[tuple[str, np.ndarray]], first_line: int
) -> None:
    details: list[dict[str, Any]] = []
    total = 0
    for name, bad in bad_by_column:
        positions = np.flatnonzero(bad)
        total += len(positions)
        for pos in positions[:MAX_DETAILS]:
            value = chunk[name].iat[pos]
            details.append(
                {
                    "line": first_line + int(pos),
                    "field": name,
                    "value": value[:40],
                    "problem": _problem(value),
                }
            )
    details.sort(key=lambda d: (d["line"], d["field"]))
    details = details[:MAX_DETAILS]
    first = details[0]
    raise invalid(
        f"line {first['line']}, column {first['field']}: {first['problem']}"
        f" ({total} bad cell(s) in this part of the file; add ?on_error=skip "
        f"to keep such rows with an error column)",
        details,
    )


def _row_errors(
    chunk: pd.DataFrame, bad_by_column: list[tuple[str, np.ndarray]], n: int
) -> list[str]:
    errors = [""] * n
    for name, bad in bad_by_column:
        for pos in np.flatnonzero(bad):
            text = f"{name}: {_problem(chunk[name].iat[pos])}"
            errors[pos] = f"{errors[pos]}; {text}" if errors[pos] else text
    return errors


def _publish_latest(job_path: Path, latest_path: Path) -> None:
    """Point predicciones.csv at the job's file atomically (hard link, else a copy)."""
    tmp = latest_path.with_name(f".{latest_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(job_path, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(job_path, tmp)
    try:
        os.replace(tmp, latest_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
