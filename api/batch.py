"""Score a CSV of any size in chunks, keeping memory flat, and save the result atomically.

The upload is read through pandas in ``batch_chunk_rows`` chunks; each chunk is
validated, scored and appended to a temporary file beside the outputs. Only when the
whole file went through is the temporary file renamed to the per-job file and linked
as ``predicciones.csv``, so a failed batch leaves no half-written result.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pa_csv

from api.runtime import LoadedModel
from api.validation import FLOAT32_MAX, check_width, invalid, missing_columns, sniff_delimiter

log = logging.getLogger(__name__)

LATEST_NAME = "predicciones.csv"
MAX_DETAILS = 100  # problems listed in one 400; the message gives the total
_PEEK_BYTES = 64 * 1024


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
        return {"job_id": self.job_id, "saved_path": str(self.latest_path),
                "job_path": str(self.job_path), "rows": self.rows, "predicted": self.predicted,
                "errors": self.errors, "counts": self.counts,
                "duration_s": round(self.duration_s, 3), "model": self.model}


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
        buffer[:len(data)] = data
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
            raise invalid(f"the upload ended after {self._seen} of the {self._expected} bytes "
                          "its Content-Length announced (client disconnected?); nothing saved")
        self._seen += len(data)
        buffer[:len(data)] = data
        return len(data)


def _open_csv(stream: IO[bytes]) -> tuple[IO[bytes], str]:
    """The stream ready for pandas and its delimiter, sniffed from the header line."""
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
    return io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 20), delimiter


def _chunks(stream: IO[bytes], delimiter: str, chunk_rows: int) -> Any:
    return pd.read_csv(stream, sep=delimiter, dtype=str, keep_default_na=False,
                       na_filter=False, encoding="utf-8-sig", chunksize=chunk_rows)


def _parse_features(chunk: pd.DataFrame, features: tuple[str, ...]
                    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]]:
    """float32 matrix, per-row ok mask, and per column the mask of bad cells."""
    matrix = np.empty((len(chunk), len(features)), dtype=np.float32)
    ok = np.ones(len(chunk), dtype=bool)
    bad_by_column: list[tuple[str, np.ndarray]] = []
    for col, name in enumerate(features):
        column = chunk[name]
        try:  # fast path: a clean column converts in one vectorised cast
            values = column.astype(np.float64).to_numpy()
        except (ValueError, TypeError):  # some cell is not a number: find which, cell by cell
            values = pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan)
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


def run_batch(stream: IO[bytes], model: LoadedModel, output_dir: Path, chunk_rows: int,
              on_error: str = "fail", expected_bytes: int | None = None) -> BatchResult:
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
    job_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    job_path = output_dir / f"predicciones-{job_id}.csv"
    latest_path = output_dir / LATEST_NAME
    handle = tempfile.NamedTemporaryFile("wb", dir=output_dir, prefix=".batch-", suffix=".tmp",
                                         delete=False)
    tmp_path = Path(handle.name)
    rows = predicted = 0
    counts: Counter[str] = Counter()
    writer: _ChunkWriter | None = None
    try:
        with handle:
            if expected_bytes is not None:
                stream = _Exact(stream, expected_bytes)
            source, delimiter = _open_csv(stream)
            for chunk in _read(source, delimiter, chunk_rows):
                chunk.columns = [str(c).strip() for c in chunk.columns]
                if rows == 0:
                    absent = missing_columns(chunk.columns, model.schema)
                    if absent:
                        raise invalid(f"line 1: missing required column(s): {', '.join(absent)}",
                                      [{"line": 1, "field": n, "problem": "missing column"}
                                       for n in absent])
                    taken = [c for c in chunk.columns if c in reserved]
                    if taken:
                        raise invalid(f"line 1: column(s) {', '.join(taken)} would be overwritten "
                                      "by the output; rename or drop them",
                                      [{"line": 1, "field": n, "problem": "reserved column"}
                                       for n in taken])
                matrix, ok, bad_by_column = _parse_features(chunk, features)
                if bad_by_column and on_error != "skip":
                    _raise_bad_cells(chunk, bad_by_column, first_line=rows + 2)
                n = len(chunk)
                labels = np.full(n, "", dtype=object)
                probs = np.full((n, len(classes)), np.nan)
                if ok.any():
                    scored = model.predict(matrix[ok] if not ok.all() else matrix)
                    labels[ok] = scored.labels
                    probs[ok] = scored.probabilities
                    counts.update(scored.labels)
                    predicted += len(scored.labels)
                column_of = model.column_of
                chosen = np.array([column_of.get(lbl, 0) for lbl in labels[ok]], dtype=int)
                probability = np.full(n, np.nan)
                probability[ok] = probs[ok][np.arange(len(chosen)), chosen]
                out = chunk.assign(prediction=labels, probability=probability,
                                 **dict(zip(prob_columns, probs.T)),
                                 model_version=model.version)
                if on_error == "skip":
                    out["error"] = _row_errors(chunk, bad_by_column, n)
                writer = writer or _ChunkWriter(handle)
                writer.write(out)
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
    log.info("batch %s: %d rows (%d predicted) with %s v%s in %.2fs", job_id, rows, predicted,
             model.name, model.version, duration)
    return BatchResult(job_id, job_path, latest_path, rows, predicted, rows - predicted,
                       {c: counts.get(c, 0) for c in classes}, duration, model.identity())


class _ChunkWriter:
    """Append chunks to one CSV through Arrow's writer (tens of times faster than to_csv).

    Text cells are written quoted, numbers bare, missing values (no prediction) empty.
    """

    def __init__(self, sink: IO[bytes]):
        self._sink = sink
        self._writer: pa_csv.CSVWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            # Fix the column types on the first chunk so every chunk writes alike.
            self._schema = pa.schema([pa.field(f.name, pa.string() if pa.types.is_large_string(
                f.type) else f.type) for f in table.schema])
            self._writer = pa_csv.CSVWriter(self._sink, self._schema,
                                            write_options=pa_csv.WriteOptions(quoting_style="needed"))
        self._writer.write_table(table.cast(self._schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _read(source: IO[bytes], delimiter: str, chunk_rows: int) -> Any:
    """Yield chunks, turning pandas' parse errors into a 400 that names the line."""
    try:
        reader = _chunks(source, delimiter, chunk_rows)
        while True:
            try:
                chunk = next(reader)
            except StopIteration:
                return
            yield chunk
    except pd.errors.EmptyDataError:
        raise invalid("the CSV file is empty: expected a header row and data rows") from None
    except pd.errors.ParserError as exc:
        detail = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        raise invalid(f"malformed CSV: {detail}") from None
    except UnicodeDecodeError as exc:
        raise invalid(f"the CSV is not UTF-8 text (byte {exc.start} of a read block)") from None


def _raise_bad_cells(chunk: pd.DataFrame, bad_by_column: list[tuple[str, np.ndarray]],
                     first_line: int) -> None:
    details: list[dict[str, Any]] = []
    total = 0
    for name, bad in bad_by_column:
        positions = np.flatnonzero(bad)
        total += len(positions)
        for pos in positions[:MAX_DETAILS]:
            value = chunk[name].iat[pos]
            details.append({"line": first_line + int(pos), "field": name,
                            "value": value[:40], "problem": _problem(value)})
    details.sort(key=lambda d: (d["line"], d["field"]))
    details = details[:MAX_DETAILS]
    first = details[0]
    raise invalid(f"line {first['line']}, column {first['field']}: {first['problem']}"
                  f" ({total} bad cell(s) in this part of the file; add ?on_error=skip "
                  f"to keep such rows with an error column)", details)


def _row_errors(chunk: pd.DataFrame, bad_by_column: list[tuple[str, np.ndarray]],
                n: int) -> list[str]:
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
