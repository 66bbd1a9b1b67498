"""Score Spark DataFrames with a registry version: resolved once on the driver, bytes broadcast.

``score(df, name)`` reads the active version (or the one given) and its ONNX bytes on the
driver, checks the bytes' sha256 and broadcasts them; the executors run onnxruntime
through ``mapInArrow`` with one session per Python worker, and never need MongoDB or its
credentials. Every row of the job is scored by that one version, named in the
``model_version`` column, whatever is activated while the job runs.

``run_job`` is what ``bridge score`` calls: read CSV or Parquet, score, write Spark's
output directory and a ``_manifest.json`` beside ``_SUCCESS``.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from registry_bridge.errors import RegistryError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from registry_bridge.entities import ModelVersion
    from registry_bridge.store import ModelStore

FAIL, SKIP = "fail", "skip"
MANIFEST = "_manifest.json"
DEFAULT_MASTER = "local[*]"
# Rows per Arrow batch handed to a Python worker: large enough that the per-batch costs
# (the ONNX call, building the output batch) vanish, small enough to keep workers' memory low.
BATCH_ROWS = 100_000
# Marks a bad cell's message inside Spark's exception so the driver can name the row.
_BAD_CELL = re.compile(r"BAD_CELL partition=(\d+) offset=(\d+) :: (.*?) ::END")
INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class ShippedVersion:
    """What the executors need besides the bytes: identity, classes, schema, ONNX outputs."""

    name: str
    version: int
    run_id: str | None
    sha256: str
    classes: tuple[str, ...]
    input_schema: tuple[dict[str, Any], ...]
    onnx_io: dict[str, str] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return [str(f["name"]) for f in self.input_schema]

    def output_columns(self, on_error: str) -> list[tuple[str, str]]:
        """The columns added to the input, with their Spark SQL types (as /batch-predict)."""
        columns = [("prediction", "string"), ("probability", "float")]
        columns += [(f"prob_{c}", "float") for c in self.classes]
        columns.append(("model_version", "bigint"))
        if on_error == SKIP:
            columns.append(("error", "string"))
        return columns


def resolve_version(
    store: ModelStore, name: str, version: int | None = None
) -> tuple[ModelVersion, bytes]:
    """The version to score with (the active one unless given) and its sha256-checked bytes.

    Raises:
        RegistryError: NO_ACTIVE_MODEL, NOT_FOUND, or CONFLICT when the bytes changed.
    """
    if version is None:
        state = store.get_active_version(name)
        if state is None:
            raise RegistryError(
                "NO_ACTIVE_MODEL", f"model {name!r} has no active version; give --version"
            )
        version = state.active_version
    found = store.get_model_version(name, int(version))
    return found, store.read_artifact(found)


def ship(found: ModelVersion) -> ShippedVersion:
    """The executors' description of ``found``."""
    return ShippedVersion(
        found.name,
        int(found.version),
        found.run_id,
        found.sha256,
        tuple(str(c) for c in found.classes),
        tuple(dict(f) for f in found.input_schema),
        dict(found.onnx_io or {}),
    )


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
    returned DataFrame is lazy, as Spark's are.

    Raises:
        RegistryError: INVALID_INPUT naming missing or reserved columns (before any task
            runs), NO_ACTIVE_MODEL, NOT_FOUND, CONFLICT for changed bytes.
    """
    return ScoringJob.prepare(df, name, version=version, on_error=on_error, store=store).scored


@dataclass
class ScoringJob:
    """One resolved version applied to one DataFrame, and the per-partition counts it keeps."""

    source: DataFrame
    scored: DataFrame
    shipped: ShippedVersion
    on_error: str
    counts: Any  # pyspark Accumulator of {partition: (rows, errors)}

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
        if on_error not in (FAIL, SKIP):
            raise RegistryError("INVALID_INPUT", f"on_error must be fail or skip, got {on_error!r}")
        if store is None:
            store = _default_store()
        found, data = resolve_version(store, name, version)
        shipped = ship(found)
        _check_columns(df, shipped, on_error)
        spark = df.sparkSession
        payload = spark.sparkContext.broadcast(data)
        counts = spark.sparkContext.accumulator({}, _LatestPerPartition())
        out_schema = ", ".join(
            [f"`{f.name}` {f.dataType.simpleString()}" for f in df.schema.fields]
            + [f"`{n}` {t}" for n, t in shipped.output_columns(on_error)]
        )
        scorer = _partition_scorer(shipped, payload, on_error, counts)
        return cls(df, df.mapInArrow(scorer, out_schema), shipped, on_error, counts)

    def totals(self) -> tuple[int, int]:
        """Rows scored and rows in error, once an action ran (each partition counted once)."""
        values = self.counts.value.values()
        return sum(v[0] for v in values), sum(v[1] for v in values)


def _default_store() -> ModelStore:
    from conf.settings import load_settings
    from registry_bridge.store import ModelStore

    return ModelStore.from_settings(load_settings())


def _check_columns(df: DataFrame, shipped: ShippedVersion, on_error: str) -> None:
    """Missing, reserved or non-numeric feature columns: refused before any task runs."""
    from pyspark.sql import types as T

    names = df.columns
    absent = [f for f in shipped.features if f not in names]
    if absent:
        raise RegistryError(
            "INVALID_INPUT",
            f"missing required column(s): {', '.join(absent)}",
            [{"field": n, "problem": "missing column"} for n in absent],
        )
    reserved = {n for n, _ in shipped.output_columns(SKIP)}
    taken = [n for n in names if n in reserved]
    if taken:
        raise RegistryError(
            "INVALID_INPUT",
            f"column(s) {', '.join(taken)} would be overwritten by the output; rename or drop them",
            [{"field": n, "problem": "reserved column"} for n in taken],
        )
    accepted = (T.NumericType, T.StringType)
    wrong = [
        f"{f.name} ({f.dataType.simpleString()})"
        for f in df.schema.fields
        if f.name in shipped.features and not isinstance(f.dataType, accepted)
    ]
    if wrong:
        raise RegistryError(
            "INVALID_INPUT",
            f"feature column(s) must hold numbers or numeric text: {', '.join(wrong)}",
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
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _model(shipped: ShippedVersion, payload: Any) -> Any:
    """The worker's loaded model for ``shipped``; built from the broadcast bytes once."""
    model = _MODELS.get(shipped.sha256)
    if model is not None:
        return model
    with _MODELS_LOCK:
        model = _MODELS.get(shipped.sha256)
        if model is None:
            from api.runtime import load_model

            data = payload.value
            if hashlib.sha256(data).hexdigest() != shipped.sha256:  # damaged on the way
                raise RuntimeError(f"{shipped.name} v{shipped.version}: broadcast bytes changed")
            model = load_model(
                shipped.name,
                shipped.version,
                shipped.run_id,
                shipped.classes,
                list(shipped.input_schema),
                data,
                shipped.sha256,
                shipped.onnx_io,
            )
            _MODELS.clear()  # a worker scores one version at a time
            _MODELS[shipped.sha256] = model
    return model


def _partition_scorer(
    shipped: ShippedVersion, payload: Any, on_error: str, counts: Any
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function ``mapInArrow`` runs on each partition's batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        model = _model(shipped, payload)
        context = TaskContext.get()
        partition = context.partitionId() if context is not None else 0
        offset = errors = 0
        for batch in batches:
            out, bad = _score_batch(model, shipped, batch, on_error, partition, offset)
            offset += batch.num_rows
            errors += bad
            yield out
        counts.add({partition: (offset, errors)})

    return run


def _score_batch(
    model: Any,
    shipped: ShippedVersion,
    batch: pa.RecordBatch,
    on_error: str,
    partition: int,
    offset: int,
) -> tuple[pa.RecordBatch, int]:
    """One Arrow batch with the output columns appended; and how many rows are in error."""
    from pyarrow import compute as pc

    from api.batch import _problem
    from api.validation import FLOAT32_MAX

    n = batch.num_rows
    features = shipped.features
    matrix = np.empty((n, len(features)), dtype=np.float32)
    ok = np.ones(n, dtype=bool)
    bad_by_column: list[tuple[str, np.ndarray]] = []
    for col, name in enumerate(features):
        column = batch.column(batch.schema.get_field_index(name))
        try:
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            text = pc.utf8_trim_whitespace(column.cast(pa.string()))
            values = np.array([_to_float(v) for v in text.to_pylist()], dtype=np.float64)
        bad = ~(np.abs(values) <= FLOAT32_MAX)  # NaN, null, inf, beyond float32
        if bad.any():
            bad_by_column.append((name, bad))
            ok &= ~bad
            values = np.where(bad, 0.0, values)
        matrix[:, col] = values

    def cell(name: str, pos: int) -> str:
        value = batch.column(batch.schema.get_field_index(name))[pos].as_py()
        return "empty" if value is None else _problem(str(value))

    if bad_by_column and on_error != SKIP:
        pos = min(int(np.flatnonzero(bad)[0]) for _, bad in bad_by_column)
        name = next(n for n, bad in bad_by_column if bad[pos])
        raise ValueError(
            f"BAD_CELL partition={partition} offset={offset + pos} :: "
            f"column {name}: {cell(name, pos)} ::END"
        )
    classes = shipped.classes
    labels = np.full(n, None, dtype=object)
    probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
    probability = np.full(n, np.nan, dtype=np.float32)
    if ok.any():
        scored = model.predict(matrix if ok.all() else matrix[ok])
        column_of = model.column_of
        found_labels = np.asarray(scored.labels, dtype=object)
        chosen = np.array([column_of.get(label, 0) for label in found_labels], dtype=np.intp)
        labels[ok] = found_labels
        probs[ok] = scored.probabilities
        probability[ok] = probs[ok][np.arange(len(chosen)), chosen]
    mask = None if ok.all() else ~ok
    columns = list(batch.columns)
    names = list(batch.schema.names)
    columns.append(pa.array(labels, type=pa.string()))
    columns.append(pa.array(probability, mask=mask))
    for values in probs.T:
        columns.append(pa.array(values, mask=mask))
    columns.append(pa.array(np.full(n, shipped.version, dtype=np.int64)))
    names += [c for c, _ in shipped.output_columns(on_error)]
    if on_error == SKIP:
        errors: list[str | None] = [None] * n
        for name, bad in bad_by_column:
            for pos in np.flatnonzero(bad):
                text = f"{name}: {cell(name, int(pos))}"
                errors[pos] = f"{errors[pos]}; {text}" if errors[pos] else text
        columns.append(pa.array(errors, type=pa.string()))
    return pa.RecordBatch.from_arrays(columns, names=names), int((~ok).sum())


def _to_float(value: str | None) -> float:
    try:
        return float(value) if value else float("nan")
    except ValueError:
        return float("nan")


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
        frame = spark.read.options(header=True, inferSchema=False, mode="PERMISSIVE").csv(path)
    except Exception as exc:
        if not _is_spark_error(exc):
            raise
        raise RegistryError("INVALID_INPUT", f"cannot read {path}: {_first_line(exc)}") from None
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
    writer = job.scored.write.mode("overwrite" if overwrite else "errorifexists")
    watcher = _Progress(spark, progress) if progress else None
    try:
        if output_format == "csv":
            writer.options(header=True).csv(str(target))
        else:
            writer.parquet(str(target))
    except Exception as exc:
        found = _BAD_CELL.search(str(exc))
        if found is not None:
            raise _bad_cell_error(df, source, *found.groups()) from None
        if not _is_spark_error(exc):
            raise
        raise RegistryError("INTERNAL_ERROR", f"the Spark job failed: {_first_line(exc)}") from exc
    finally:
        if watcher:
            watcher.stop()
    rows, errors = job.totals()
    shipped = job.shipped
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
        master=spark.sparkContext.master,
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


def _bad_cell_error(df: DataFrame, source: str, partition: str, offset: str, problem: str) -> Any:
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


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of a Spark error (its Java stack trace left out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


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
