"""Score Spark DataFrames with a registry version: resolved once on the driver, bytes broadcast.

Over 500 lines: the driver's side, the executors' side and ``bridge score``'s job are one
Spark job, read together; the scoring itself is registry_bridge.scoring's.

``score(df, name)`` reads the active version (or the one given) and its ONNX bytes on the
driver, checks the bytes' sha256 and broadcasts them; the executors score through
``mapInArrow`` with one onnxruntime session per Python worker, and never need MongoDB or
its credentials. Every row of the job is scored by that one version, named in the
``model_version`` column, whatever is activated while the job runs. Validation, the
session, the output columns and the error policy are :mod:`registry_bridge.scoring`'s,
the same as ``/batch-predict``'s.

``run_job`` is what ``bridge score`` calls: read CSV or Parquet, score, write Spark's
output directory and a ``_manifest.json`` beside ``_SUCCESS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
from pyarrow import compute as pa_compute

from registry_bridge import scoring
from registry_bridge.errors import RegistryError, first_line

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from registry_bridge.entities import ModelVersion
    from registry_bridge.store import ModelStore

FAIL, SKIP = scoring.ON_ERROR
MANIFEST = "_manifest.json"
DEFAULT_MASTER = "local[*]"
# Rows per Arrow batch handed to a Python worker: large enough that the per-batch costs
# (the ONNX call, building the output batch) vanish, small enough to keep workers' memory low.
BATCH_ROWS = 100_000
# Marks a bad cell's message inside Spark's exception so the driver can name the row.
_BAD_CELL = re.compile(r"BAD_CELL partition=(\d+) offset=(\d+) :: (.*?) ::END")
INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Spark SQL types of the output columns that are not probabilities (float, as the model's).
_OUTPUT_TYPES = {"prediction": "string", "model_version": "bigint", "error": "string"}


def resolve_version(
    store: ModelStore, name: str, version: int | None = None
) -> tuple[ModelVersion, bytes]:
    """The version to score with (the active one unless given) and its sha256-checked bytes.

    Raises:
        RegistryError: NO_ACTIVE_MODEL (no fallback to the newest: a dataset is scored with
            a version someone chose), NOT_FOUND, or CONFLICT when the bytes changed.
    """
    found = store.resolve_model_version(name, version, fallback="none")
    return found, store.read_artifact(found)


def output_columns(classes: tuple[str, ...] | list[str], on_error: str) -> list[tuple[str, str]]:
    """The columns scoring adds, with their Spark SQL types (``error`` only when skipping)."""
    names = scoring.output_names(classes)
    return [(n, _OUTPUT_TYPES.get(n, "float")) for n in names if n != "error" or on_error == SKIP]


# --- the driver's side ---------------------------------------------------------------


def score(
    df: DataFrame,
    name: str,
    *,
    version: int | None = None,
    on_error: str = FAIL,
    store: ModelStore | None = None,
) -> DataFrame:
    """``df`` with the columns of ``/batch-predict`` added, scored by one registry version.

    The version (the active one unless ``version`` is given) is resolved now, once; the
    returned DataFrame is lazy, as Spark's are. ``store`` defaults to the settings' one.

    Raises:
        RegistryError: INVALID_INPUT naming missing, repeated, reserved or non-numeric
            columns (before any task runs), NO_ACTIVE_MODEL, NOT_FOUND, CONFLICT for
            changed bytes.
    """
    return ScoringJob.prepare(df, name, version=version, on_error=on_error, store=store).scored


@dataclass
class ScoringJob:
    """One resolved version applied to one DataFrame, and the per-partition counts it keeps."""

    source: DataFrame
    scored: DataFrame
    version: ModelVersion
    on_error: str
    counts: Any  # pyspark Accumulator of {partition: (rows, rows in error)}

    @classmethod
    def prepare(
        cls,
        df: DataFrame,
        name: str,
        *,
        version: int | None = None,
        on_error: str = FAIL,
        store: ModelStore | None = None,
    ) -> ScoringJob:
        """Resolve the version, check the columns, broadcast the bytes; nothing runs yet."""
        if on_error not in scoring.ON_ERROR:
            raise scoring.invalid(f"on_error must be fail or skip, got {on_error!r}")
        found, data = resolve_version(store or _default_store(), name, version)
        _check_columns(df, found)
        context = df.sparkSession.sparkContext
        payload = context.broadcast((found, data))
        counts: Any = context.accumulator({}, cast(Any, _LatestPerPartition()))
        from pyspark.sql.types import StructField, StructType, _parse_datatype_string

        out_schema = StructType(
            [
                *df.schema.fields,
                *(
                    StructField(n, _parse_datatype_string(t))
                    for n, t in output_columns(found.classes, on_error)
                ),
            ]
        )
        scorer = _partition_scorer(found.sha256, payload, on_error, counts)
        return cls(df, _map_in_arrow(df, scorer, out_schema), found, on_error, counts)

    def totals(self) -> tuple[int, int]:
        """Rows scored and rows in error, once an action ran (each partition counted once)."""
        values = self.counts.value.values()
        return sum(v[0] for v in values), sum(v[1] for v in values)


def _default_store() -> ModelStore:
    from conf.settings import load_settings
    from registry_bridge.store import ModelStore

    return ModelStore.from_settings(load_settings())


def _check_columns(df: DataFrame, found: ModelVersion) -> None:
    """The scoring core's column rules, and feature types, checked before any task runs."""
    from pyspark.sql import types as T

    schema = scoring.InputSchema.from_fields(found.input_schema)
    reserved = scoring.output_names(found.classes)
    scoring.check_columns(df.columns, schema, reserved, where="input columns")
    wrong = [
        f"{f.name} ({f.dataType.simpleString()})"
        for f in df.schema.fields
        if f.name in schema.names and not isinstance(f.dataType, T.NumericType | T.StringType)
    ]
    if wrong:
        raise scoring.invalid(
            f"feature column(s) must hold numbers or numeric text: {', '.join(wrong)}"
        )


class _LatestPerPartition:
    """Accumulator merging ``{partition: counts}``: a retried task replaces, never adds."""

    def zero(self, value: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
        return {}

    def addInPlace(  # noqa: N802 (pyspark's AccumulatorParam interface)
        self, first: dict[int, tuple[int, int]], second: dict[int, tuple[int, int]]
    ) -> dict[int, tuple[int, int]]:
        first.update(second)
        return first


# --- the executors' side -------------------------------------------------------------

# One model per Python worker, keyed by the bytes' sha256: Spark reuses its Python workers
# across tasks, so the session is built once per worker, not once per task or batch.
_MODELS: dict[str, scoring.LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _model(sha256: str, payload: Any) -> scoring.LoadedModel:
    """This worker's model for the broadcast version; built once from the broadcast bytes."""
    model = _MODELS.get(sha256)
    if model is None:
        with _MODELS_LOCK:
            model = _MODELS.get(sha256)
            if model is None:
                found, data = payload.value
                # Checked on the driver; damaged on the way?
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise RuntimeError(f"{found.label}: the broadcast bytes changed")
                model = scoring.model_from_version(found, data)
                _MODELS.clear()  # a worker scores one version at a time
                _MODELS[sha256] = model
    found = payload.value[0]
    if (model.name, model.version) != (found.name, found.version):  # same bytes, other version
        model = dataclasses.replace(model, name=found.name, version=found.version)
    return model


def _partition_scorer(
    sha256: str, payload: Any, on_error: str, counts: Any
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function ``mapInArrow`` runs on each partition's batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        model = _model(sha256, payload)
        context = TaskContext.get()
        partition = context.partitionId() if context is not None else 0
        offset = errors = 0
        for batch in batches:
            try:
                scored = scoring.score_batch(model, batch, on_error, first_row=offset)
            except RegistryError as exc:
                raise ValueError(_bad_cell_marker(exc, partition)) from None
            offset += batch.num_rows
            errors += batch.num_rows - scored.predicted
            yield _nulls_for_empty(scored.batch, complete=scored.predicted == batch.num_rows)
        counts.add({partition: (offset, errors)})

    return run


def _csv_safe(df: DataFrame) -> DataFrame:
    """``df`` with text cells and column names a spreadsheet would run as a formula
    prefixed with ``'`` (``scoring.csv_safe``, the rule of every CSV the project writes)."""
    from pyspark.sql.types import StructField, StructType

    schema = StructType(
        [StructField(scoring.safe_text(f.name), f.dataType, f.nullable) for f in df.schema.fields]
    )

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield scoring.csv_safe(batch)

    return _map_in_arrow(df, run, schema)


def _map_in_arrow(
    df: DataFrame,
    run: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    schema: Any,
) -> DataFrame:
    """``df.mapInArrow(run, schema)`` for any column names: ``run`` sees the input's own.

    pyspark resolves the input columns by name as SQL paths, so a CSV column named
    ``patient.id`` failed with an AnalysisException; they cross by position instead.
    """
    names = list(df.columns)

    def renamed(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return run(pa.RecordBatch.from_arrays(b.columns, names=names) for b in batches)

    positional = df.toDF(*[f"_c{i}" for i in range(len(names))])
    return positional.mapInArrow(renamed, schema)


def _bad_cell_marker(exc: RegistryError, partition: int) -> str:
    """The core's first bad row as a line the driver finds in Spark's exception."""
    if not exc.details or "row" not in exc.details[0]:
        return str(exc)  # not a cell (e.g. a column's type): the core's message as it is
    first = exc.details[0]
    where = f"column {first['field']}: " if "field" in first else ""
    return (
        f"BAD_CELL partition={partition} offset={first['row']} :: {where}{first['problem']} ::END"
    )


def _nulls_for_empty(batch: pa.RecordBatch, complete: bool) -> pa.RecordBatch:
    """Spark's way to say "none": null, not the empty text CSV needs, for label and error."""
    names = batch.schema.names
    targets = [n for n in ("prediction", "error") if n in names and (n == "error" or not complete)]
    if not targets:
        return batch
    columns = list(batch.columns)
    for name in targets:
        index = names.index(name)
        column = columns[index]
        columns[index] = pa_compute.if_else(
            pa_compute.equal(column, ""), pa.scalar(None, pa.string()), column
        )
    return pa.RecordBatch.from_arrays(columns, names=names)


# --- bridge score: read, score, write, manifest --------------------------------------


def spark_session(master: str | None = None, app_name: str = "bridge-score") -> SparkSession:
    """A SparkSession for scoring (an existing one is reused, as ``getOrCreate`` does).

    ``master`` defaults to spark-submit's ``--master`` under spark-submit, else ``local[*]``.
    In local mode the Python workers run this interpreter, so they import this project as
    the driver does; on a cluster they run what PYSPARK_PYTHON names there (README).
    Workers are reused across tasks, which keeps one ONNX session per worker.

    Raises:
        RegistryError: INVALID_INPUT when pyspark is not installed (the ``spark`` extra).
    """
    SparkSession = _session_class()  # noqa: N806 (a class)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # set by spark-submit's launcher
    builder = SparkSession.builder.appName(app_name)
    if master or not under_submit:
        builder = builder.master(master or DEFAULT_MASTER)
    if (master or DEFAULT_MASTER).startswith("local") and not under_submit:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.showConsoleProgress", "false")  # ours is one line per second
        .config("spark.sql.session.timeZone", "UTC")
        # Scores are distinct floats: Parquet's dictionary encoding is tried and given up
        # on every page; without it writing the output took ~20 % less time (1M rows).
        .config("spark.hadoop.parquet.enable.dictionary", "false")
        .getOrCreate()
    )


def _session_class() -> Any:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise RegistryError(
            "INVALID_INPUT", "pyspark is not installed: pip install -e '.[spark]'"
        ) from None
    return SparkSession


@contextlib.contextmanager
def job_session(master: str | None = None) -> Iterator[SparkSession]:
    """A session for one command: stopped at the end unless it was running before."""
    running = _session_class().getActiveSession()
    session = spark_session(master)
    try:
        yield session
    finally:
        if running is None:
            session.stop()


def input_format(path: str) -> str:
    """``csv`` or ``parquet`` for a file, a directory of such files or a glob.

    Raises:
        RegistryError: INVALID_INPUT when nothing matches or the format is unclear.
    """
    if os.path.isdir(path):
        candidates = [str(p) for p in Path(path).rglob("*") if p.is_file()]
    else:
        candidates = glob.glob(path) if glob.has_magic(path) else [path]
        if not any(os.path.exists(c) for c in candidates):
            raise RegistryError("INVALID_INPUT", f"--input {path}: no such file or directory")
    kinds = {
        INPUT_FORMATS[Path(c).suffix.lower()]
        for c in candidates
        if Path(c).suffix.lower() in INPUT_FORMATS and not Path(c).name.startswith(("_", "."))
    }
    if len(kinds) != 1:
        found = "both CSV and Parquet" if kinds else "no .csv or .parquet file"
        raise RegistryError(
            "INVALID_INPUT", f"--input {path}: {found}; give CSV or Parquet files of one kind"
        )
    return kinds.pop()


def read_input(spark: SparkSession, path: str) -> DataFrame:
    """The input as a DataFrame: CSV cells as text (checked by the scorer, passed through)."""
    kind = input_format(path)
    try:
        if kind == "parquet":
            return spark.read.parquet(path)
        # multiLine: a quoted cell may hold a line break (it split its row into two). The
        # price: each CSV file is read by one task; Parquet, or several files, parallelise.
        frame = spark.read.options(
            header=True, inferSchema=False, mode="PERMISSIVE", multiLine=True
        ).csv(path)
    except Exception as exc:
        if not _is_spark_error(exc):
            raise
        raise RegistryError("INVALID_INPUT", f"cannot read {path}: {first_line(exc)}") from None
    # /batch-predict strips spaces around header names; so does this.
    return frame.toDF(*[c.strip() for c in frame.columns])


@dataclass
class JobResult:
    """What ``_manifest.json`` records about one scoring job."""

    job_id: str
    model: dict[str, Any]
    input: str
    output: str
    format: str
    on_error: str
    master: str
    rows_in: int
    rows_out: int
    rows_in_error: int
    seconds: float
    started_at: str
    finished_at: str

    def manifest(self) -> dict[str, Any]:
        return asdict(self)


def run_job(
    spark: SparkSession,
    store: ModelStore,
    name: str,
    source: str,
    output: str,
    *,
    output_format: str = "parquet",
    version: int | None = None,
    on_error: str = FAIL,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> JobResult:
    """Score ``source`` into the directory ``output`` and write its ``_manifest.json``.

    Raises:
        RegistryError: CONFLICT when ``output`` exists and ``overwrite`` is false;
            INVALID_INPUT for bad input (a bad cell names its row); the store's errors.
    """
    if output_format not in ("parquet", "csv"):
        raise RegistryError(
            "INVALID_INPUT", f"--format must be parquet or csv, not {output_format}"
        )
    target = Path(output).resolve()
    _check_output(target, source, overwrite)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    df = read_input(spark, source)
    job = ScoringJob.prepare(df, name, version=version, on_error=on_error, store=store)
    scored = _csv_safe(job.scored) if output_format == "csv" else job.scored
    writer = scored.write.mode("overwrite" if overwrite else "errorifexists")
    watcher = _Progress(spark, progress) if progress else None
    try:
        if output_format == "csv":
            # Spark trims each cell's outer spaces by default: written as they are instead,
            # so what csv_safe checked is what a spreadsheet opens.
            writer.options(
                header=True, ignoreLeadingWhiteSpace=False, ignoreTrailingWhiteSpace=False
            ).csv(str(target))
        else:
            writer.parquet(str(target))
    except Exception as exc:
        found = _BAD_CELL.search(str(exc))
        if found is not None:
            raise _bad_cell_error(df, source, *found.groups()) from None
        if not _is_spark_error(exc):
            raise
        raise RegistryError("INTERNAL_ERROR", f"the Spark job failed: {first_line(exc)}") from exc
    finally:
        if watcher:
            watcher.stop()
    rows, errors = job.totals()
    shipped = job.version
    result = JobResult(
        job_id=f"{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        model={
            "name": shipped.name,
            "version": shipped.version,
            "sha256": shipped.sha256,
            "run_id": shipped.run_id,
        },
        input=source,
        output=str(target),
        format=output_format,
        on_error=on_error,
        master=spark.sparkContext.master or "",
        rows_in=rows,
        rows_out=rows,
        rows_in_error=errors,
        seconds=round(time.perf_counter() - started, 3),
        started_at=started_at.isoformat(),
        finished_at=datetime.now(UTC).isoformat(),
    )
    partial = target / f".{MANIFEST}.tmp"
    partial.write_text(json.dumps(result.manifest(), indent=2) + "\n", encoding="utf-8")
    partial.replace(target / MANIFEST)
    return result


def _check_output(target: Path, source: str, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise RegistryError(
            "CONFLICT", f"--output {target} exists; choose another directory or add --overwrite"
        )
    inputs = [
        Path(p).resolve() for p in (glob.glob(source) if glob.has_magic(source) else [source])
    ]
    if any(p == target or target in p.parents for p in inputs):
        raise RegistryError("INVALID_INPUT", f"--output {target} holds the input; not overwriting")
    if target.is_file():
        target.unlink()
    else:
        shutil.rmtree(target)


def _bad_cell_error(
    df: DataFrame, source: str, partition: str, offset: str, problem: str
) -> RegistryError:
    """A bad cell's error naming the row in the input's order (and its line in one CSV file)."""
    from pyspark.sql import functions as F

    before = df.select(F.spark_partition_id().alias("p")).where(F.col("p") < int(partition)).count()
    row = before + int(offset)
    where = f"row {row + 1}"
    if os.path.isfile(source) and source.lower().endswith(".csv"):
        where += f" (line {row + 2})"
    return RegistryError(
        "INVALID_INPUT",
        f"{where}, {problem}; add --on-error skip to keep such rows with an error column",
        [{"row": row + 1, "problem": problem}],
    )


def _is_spark_error(exc: BaseException) -> bool:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    return isinstance(exc, PySparkException | Py4JJavaError)


class _Progress:
    """A line per second on the terminal: the running stage's finished and total tasks."""

    def __init__(self, spark: SparkSession, say: Callable[[str], None], every_s: float = 1.0):
        self._tracker = spark.sparkContext.statusTracker()
        self._say = say
        self._every = every_s
        self._done = threading.Event()
        self._last = ""
        self._thread = threading.Thread(target=self._loop, name="score-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self._every):
            stages = [self._tracker.getStageInfo(s) for s in self._tracker.getActiveStageIds()]
            parts = [
                f"{s.numCompletedTasks}/{s.numTasks} tasks ({s.numActiveTasks} running)"
                for s in stages
                if s is not None
            ]
            line = "scoring: " + ", ".join(parts) if parts else ""
            if line and line != self._last:
                self._say(line)
                self._last = line

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
