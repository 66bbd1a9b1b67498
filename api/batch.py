"""Score a CSV of any size in chunks, keeping memory flat, and save the result atomically.

The upload is read through Arrow's CSV reader in chunks of about ``batch_chunk_rows``
rows, every cell kept as text (input columns pass through, nothing becomes a Python
object on the clean path); each chunk is scored by ``registry_bridge.scoring`` and
appended to a temporary file beside the outputs through Arrow's CSV writer, text cells
neutralised against spreadsheet formula injection (``csv_safe``). Only when the
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
from pyarrow import csv as pa_csv

from api.validation import check_width, sniff_delimiter
from conf.settings import OutputRetention
from registry_bridge.scoring import (
    LoadedModel,
    check_columns,
    csv_safe,
    invalid,
    output_names,
    score_batch,
)
from registry_bridge.scoring.chunk import ScoredBatch

log = logging.getLogger(__name__)

LATEST_NAME = "predicciones.csv"
_JOB_PREFIX = "predicciones-"  # + job id + .csv: one file per job, subject to retention
_TMP_PREFIX = ".batch-"
_STALE_TMP_S = 86400  # a temporary file this old belongs to a job that died
_PEEK_BYTES = 64 * 1024
MAX_HEADER_BYTES = 1024 * 1024  # a longer first line is refused (400) before it is parsed
# Arrow reads blocks of bytes, not rows: aim at batch_chunk_rows rows of a typical width
# (six numbers with two decimals are ~36 bytes). A block costs several times its size
# while it is scored and written: at 64 bytes per row a 1M-row upload peaked ~50 MB higher.
_BYTES_PER_ROW = 32
_MIN_BLOCK, _MAX_BLOCK = 1 << 20, 64 << 20
_BLOCKS_AHEAD = 3  # blocks Arrow's reader may read beyond those scored (see _Paced)


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
    # The job's file, opened before retention ran: another job's retention may remove the
    # name at once (api.output_retention: 1), and the answer is still sent from this.
    # The caller closes it (Flask's send_file does).
    saved: IO[bytes]
    model: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON answer of ``?format=json``."""
        return {
            "job_id": self.job_id,
            "saved_path": self.latest_path.name,
            "job_path": self.job_path.name,
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


def _peek_header_line(stream: IO[bytes]) -> tuple[bytes, bytes]:
    """The bytes read so far and the header line in them (ended by \n, \r or the end).

    Read in pieces into one buffer (linear time), and refused past MAX_HEADER_BYTES:
    a header without a line break would otherwise be read whole.
    """
    head = bytearray()
    while True:
        more = stream.read(_PEEK_BYTES)
        head += more
        ends = [i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0]
        end = min(ends) if ends else -1
        if end >= 0 or not more:
            line = head[:end] if end >= 0 else head
            if len(line) > MAX_HEADER_BYTES:
                break
            return bytes(head), bytes(line)
        if len(head) > MAX_HEADER_BYTES:
            break
    raise invalid(
        f"line 1: the CSV header is longer than the limit of {MAX_HEADER_BYTES} bytes "
        "(no line break found)",
        [{"line": 1, "problem": "header too long", "limit_bytes": MAX_HEADER_BYTES}],
    )


def _open_csv(stream: IO[bytes]) -> tuple[IO[bytes], str, list[str]]:
    """The stream ready for the reader, its delimiter (sniffed) and the header's names."""
    head, line = _peek_header_line(stream)
    try:
        first_line = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid("line 1: the CSV is not UTF-8 text") from None
    if not head.strip(b"\xef\xbb\xbf \t\r\n"):
        raise invalid("the CSV file is empty: expected a header row and data rows")
    delimiter = sniff_delimiter(first_line)
    check_width(first_line, delimiter)
    try:
        names = next(csv.reader([first_line], delimiter=delimiter), [])
    except csv.Error as exc:  # e.g. a name over csv.field_size_limit() characters
        raise invalid(
            f"line 1: the CSV header cannot be read: {exc}",
            [{"line": 1, "problem": "unreadable header"}],
        ) from None
    return io.BufferedReader(_Prefixed(head, stream), buffer_size=1 << 20), delimiter, names


def run_batch(
    stream: IO[bytes],
    model: LoadedModel,
    output_dir: Path,
    chunk_rows: int,
    on_error: str = "fail",
    retention: OutputRetention | None = None,
    on_chunk: Callable[[pa.RecordBatch], None] | None = None,
) -> BatchResult:
    """Score every row of the CSV ``stream`` with ``model`` and save the result.

    Args:
        retention: per-job files kept once the job is saved (default: every one).
        on_chunk: called with each scored chunk (data capture samples rows from it).
        on_error: ``"fail"`` (a bad cell is a 400 naming line and column) or ``"skip"``
            (the row is kept with an ``error`` column and no prediction).

    Raises:
        RegistryError: INVALID_INPUT for an empty file, missing columns, a malformed
            CSV or (unless skipping) a bad cell.
    """
    started = time.perf_counter()
    source, delimiter, names = _read_header(stream, model)
    tally = _Tally(model.classes)
    with _atomic_output(output_dir, retention) as output:
        writer = _ChunkWriter(output.handle)
        for first_line, batch in _read(source, delimiter, names, chunk_rows):
            scored = score_batch(model, batch, on_error, first_row=first_line, row_key="line")
            writer.write(scored.batch)
            tally.add(scored)
            if on_chunk is not None:
                on_chunk(scored.batch)
        writer.close()
        if tally.rows == 0:
            raise invalid("the CSV has a header but no data rows")
    assert output.saved is not None  # _atomic_output opens it when the job is saved
    duration = time.perf_counter() - started
    log.info(
        "batch %s: %d rows (%d predicted) with %s v%s in %.2fs",
        output.job_id,
        tally.rows,
        tally.predicted,
        model.name,
        model.version,
        duration,
    )
    return BatchResult(
        output.job_id,
        output.job_path,
        output.latest_path,
        tally.rows,
        tally.predicted,
        tally.rows - tally.predicted,
        {c: int(n) for c, n in zip(model.classes, tally.counts, strict=True)},
        duration,
        output.saved,
        model.identity(),
    )


def _read_header(stream: IO[bytes], model: LoadedModel) -> tuple[IO[bytes], str, list[str]]:
    """The stream positioned for the reader, its delimiter, and the checked column names."""
    source, delimiter, raw_names = _open_csv(stream)
    names = [name.strip() for name in raw_names]
    check_columns(
        names, model.schema, output_names(model.classes), where="line 1", detail={"line": 1}
    )
    return source, delimiter, names


class _Tally:
    """Rows seen and predicted so far, and predictions per class."""

    def __init__(self, classes: tuple[str, ...]):
        self.rows = self.predicted = 0
        self.counts = np.zeros(len(classes), dtype=np.int64)

    def add(self, scored: ScoredBatch) -> None:
        self.rows += scored.batch.num_rows
        self.predicted += scored.predicted
        self.counts += scored.counts


@dataclass
class _Output:
    """The files of one job: the temporary file written, and the names it will take."""

    handle: IO[bytes]
    job_id: str
    job_path: Path
    latest_path: Path
    saved: IO[bytes] | None = None  # the job's file, read back (see BatchResult.saved)


@contextmanager
def _atomic_output(output_dir: Path, retention: OutputRetention | None) -> Iterator[_Output]:
    """A temporary file beside the outputs, renamed to the job's file only on success.

    On success ``predicciones.csv`` is pointed at the job's file and older job files
    beyond ``retention`` are removed; on any error the temporary file is removed, so a
    failed batch leaves no half-written result.
    """
    # Absolute, because Flask's send_file reads relative paths from the app's package.
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    job_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    handle = tempfile.NamedTemporaryFile(
        "wb", dir=output_dir, prefix=_TMP_PREFIX, suffix=".tmp", delete=False
    )
    tmp_path = Path(handle.name)
    output = _Output(
        handle, job_id, output_dir / f"{_JOB_PREFIX}{job_id}.csv", output_dir / LATEST_NAME
    )
    try:
        with handle:
            yield output
        # Opened and linked while it is still the temporary file, which no retention
        # removes: once renamed, another job's retention may remove the job's name at once
        # (api.output_retention: 1), and this job still links and answers its own bytes.
        output.saved = tmp_path.open("rb")
        _publish_latest(tmp_path, output.latest_path)
        os.replace(tmp_path, output.job_path)
    except BaseException:
        if output.saved is not None:
            output.saved.close()
        tmp_path.unlink(missing_ok=True)
        raise
    if retention is not None:
        apply_retention(output_dir, retention, keep=output.job_path)


def apply_retention(output_dir: Path, retention: OutputRetention, keep: Path) -> list[Path]:
    """Remove per-job files beyond ``retention`` (never ``keep``, the job just saved).

    Also removes temporary files of jobs that died mid-way (older than a day). Another
    worker may remove the same files at the same time: a file already gone is fine.
    """
    now = time.time()
    jobs = []
    for path in output_dir.glob(f"{_JOB_PREFIX}*.csv"):
        try:
            jobs.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    jobs.sort(reverse=True)  # newest first
    doomed = [
        path
        for rank, (mtime, path) in enumerate(jobs)
        if path != keep
        and (
            (retention.count is not None and rank >= retention.count)
            or (retention.max_age_s is not None and now - mtime > retention.max_age_s)
        )
    ]
    for path in output_dir.glob(f"{_TMP_PREFIX}*.tmp"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_S:
                doomed.append(path)
        except FileNotFoundError:
            continue
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        log.info("output retention: removed %d file(s) from %s", len(doomed), output_dir)
    return doomed


class _ChunkWriter:
    """Append chunks to one CSV through Arrow's writer (tens of times faster than to_csv).

    Text cells are written quoted, numbers bare, missing values (no prediction) empty.
    """

    def __init__(self, sink: IO[bytes]):
        self._sink = sink
        self._writer: pa_csv.CSVWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        table = pa.Table.from_batches([csv_safe(batch)])
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


def _read(
    source: IO[bytes], delimiter: str, names: list[str], chunk_rows: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield (line of the first row, record batch of text cells named as the header).

    Arrow's parse errors become a 400 naming the line. One reader thread: measured
    faster than Arrow's thread pool on 1M rows here, and only then does Arrow know the
    line number of a malformed row.
    """
    block = min(max(chunk_rows * _BYTES_PER_ROW, _MIN_BLOCK), _MAX_BLOCK)
    # Positional names for the reader: the header may repeat or blank a passed-through name.
    keys = [f"c{i}" for i in range(len(names))]
    line = 2
    feed = _Paced(source, block)
    try:
        reader = pa_csv.open_csv(
            feed,
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
            feed.taken()
            if batch.num_rows:
                yield line, pa.RecordBatch.from_arrays(batch.columns, names=names)
                line += batch.num_rows
    except pa.ArrowInvalid as exc:
        detail = str(exc)
        if "UTF8" in detail:
            raise invalid(f"the CSV is not UTF-8 text ({detail})") from None
        detail = detail.replace("CSV parse error: ", "").replace("Row #", "line ")
        raise invalid(f"malformed CSV: {detail[:300]}") from None
    finally:
        feed.stop()


class _Paced(io.RawIOBase):
    """The upload as Arrow's reader sees it: at most _BLOCKS_AHEAD blocks beyond those taken.

    Arrow's streaming reader reads ahead on its own thread, as fast as the upload comes,
    and keeps up to a few dozen blocks queued while the chunks are scored: the worker's
    memory then grew with the upload (+57 MB for 31 MB, +85 MB for 120 MB, measured).
    Here its reads wait until the consumer has taken the blocks before.
    """

    def __init__(self, source: IO[bytes], block: int):
        self._source = source
        self._block = block
        self._given = 0
        self._allowed = _BLOCKS_AHEAD * block
        self._stopped = False
        self._turn = threading.Condition()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._turn:
            while self._given >= self._allowed and not self._stopped:
                self._turn.wait()
            if self._stopped:
                return 0  # the consumer is gone: Arrow's thread sees the end and ends
            size = min(len(buffer), self._allowed - self._given)
        data = self._source.read(size)
        buffer[: len(data)] = data
        with self._turn:
            self._given += len(data)
        return len(data)

    def taken(self) -> None:
        """One more block handed to the consumer: let the reader read one more."""
        with self._turn:
            self._allowed += self._block
            self._turn.notify_all()

    def stop(self) -> None:
        """The consumer is done (finished or failed): never block the reader again."""
        with self._turn:
            self._stopped = True
            self._turn.notify_all()


def _publish_latest(saved: Path, latest_path: Path) -> None:
    """Point predicciones.csv at the saved job file atomically (hard link, else a copy)."""
    tmp = latest_path.with_name(f".{latest_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.link(saved, tmp)
    except OSError:  # file systems without hard links
        shutil.copyfile(saved, tmp)
    try:
        os.replace(tmp, latest_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
