"""Shared benchmark helpers: process memory, machine facts, statistics, the result files.

Everything measured here runs on this machine only; nothing binds a non-loopback address.
Memory is read from ``/proc`` (Linux): resident set size of a process and of all its
descendants (a gunicorn or uvicorn master and its workers), sampled on a thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
# PYSPARK_SUBMIT_ARGS for short local Spark jobs (the quick bench, the test suite): the
# driver JVM compiles with C1 only, collects with one GC thread and starts no UI. Their
# ~30 s are start-up and first use, where the C2 compiler and parallel GC threads cost CPU
# a short job never pays back: tests/test_spark.py kept the machine busy for 40-47 CPU-s
# against 65-68 with Spark's defaults (alone, rounds alternated), and the README walk's
# `make score` and `bridge score` took 11-12 s instead of 16-18 s. Full bench runs and
# `bridge score` itself keep Spark's defaults, the JVM a real job runs with.
SHORT_JOB_SUBMIT_ARGS = (
    '--conf spark.ui.enabled=false --driver-java-options "-XX:TieredStopAtLevel=1 '
    '-XX:+UseSerialGC" pyspark-shell'
)
# The libraries whose versions decide the numbers (reported with every result).
LIBRARIES = (
    "mlflow",
    "flask",
    "gunicorn",
    "granian",
    "uvicorn",
    "fastapi",
    "onnxruntime",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "numpy",
    "pymongo",
    "nx-27017",
)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def venv_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with the interpreter's bin/ first on PATH (mlflow execs uvicorn by name)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


# --- processes and memory ------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                kids.extend(int(p) for p in handle.read().split())
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(_children(current))
    return found


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    ticks = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return ticks / _CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """Resident set size of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def _proc_field_kb(path: str, key: str) -> int:
    """A ``Key:  N kB`` line of a /proc file, in KiB (0 when the process is gone)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size in KiB: shared pages split between the processes sharing them."""
    return _proc_field_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def peak_rss_kb(pid: int) -> int:
    """The kernel's high-water mark of one process's RSS (VmHWM) in KiB."""
    return _proc_field_kb(f"/proc/{pid}/status", "VmHWM:")


class RssSampler:
    """Samples the memory of a process tree on a thread; keeps the peaks.

    ``peak_rss_total_mb`` is the largest RSS sum over the tree (pages shared by the
    processes, e.g. libraries, counted in each, so it over-states the cost),
    ``peak_pss_total_mb`` the largest PSS sum (shared pages split: what the tree really
    holds), ``peak_rss_process_mb`` the largest single process (e.g. the worker running
    a batch), ``peak_hwm_mb`` the largest kernel high-water mark (VmHWM) of any process
    of the tree: exact between samples, but it includes the process's earlier history.

    PSS is read at most every ``PSS_EVERY_S`` (and at the start and end): the kernel
    walks a process's page tables to answer ``smaps_rollup``, ~2.4 ms of CPU per API
    worker (against 13 µs for RSS), so reading it at every sample took the CPU of the
    load being measured (3 processes at 50 Hz during a batch: ~18 % of two cores).
    """

    PSS_EVERY_S = 1.0

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid = pid
        self.interval_s = interval_s
        self._pss_at = float("-inf")
        self.peak_total_kb = 0
        self.peak_process_kb = 0
        self.peak_pss_kb = 0
        self.peak_hwm_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _sample(self, pss: bool = False) -> None:
        tree = process_tree(self.pid)
        sizes = [rss_kb(p) for p in tree]
        if sizes:
            self.peak_total_kb = max(self.peak_total_kb, sum(sizes))
            if pss or time.monotonic() - self._pss_at >= self.PSS_EVERY_S:
                self._pss_at = time.monotonic()
                self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(p) for p in tree))
            self.peak_hwm_kb = max(self.peak_hwm_kb, max(peak_rss_kb(p) for p in tree))
            self.peak_process_kb = max(self.peak_process_kb, max(sizes))
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._sample(pss=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(pss=True)

    def result(self) -> dict[str, float]:
        """Peaks in MB (10^6 bytes) and the number of samples."""
        return {
            "peak_rss_total_mb": round(self.peak_total_kb * 1024 / 1e6, 1),
            "peak_pss_total_mb": round(self.peak_pss_kb * 1024 / 1e6, 1),
            "peak_rss_process_mb": round(self.peak_process_kb * 1024 / 1e6, 1),
            "peak_hwm_mb": round(self.peak_hwm_kb * 1024 / 1e6, 1),
            "rss_samples": self.samples,
        }


def tree_rss_mb(pid: int) -> float:
    """Current RSS of a process tree in MB."""
    return round(sum(rss_kb(p) for p in process_tree(pid)) * 1024 / 1e6, 1)


def run_measured(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run a command to completion; wall time and peak memory.

    ``peak_rss_mb`` is the largest kernel high-water mark (VmHWM) of the process and its
    descendants, read until the last sample before exit (``wait4``'s ``ru_maxrss`` is no
    use here: a child inherits its parent's peak at fork, and this parent is large).

    Raises:
        RuntimeError: non-zero exit (names the log) or timeout.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as handle:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env or venv_env()),
            cwd=ROOT,
            start_new_session=True,
        )
        sampler = RssSampler(process.pid)
        with sampler:
            deadline = time.monotonic() + timeout_s
            while True:
                pid, status = os.waitpid(process.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.killpg(process.pid, signal.SIGKILL)
                    raise RuntimeError(
                        f"{command[0]} timed out after {timeout_s:.0f}s; see {log_path}"
                    )
                time.sleep(0.02)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(
            f"{' '.join(command[:4])}... exited with {process.returncode}; see {log_path}:\n{tail}"
        )
    measured = sampler.result()
    return {"wall_s": round(wall, 3), "peak_rss_mb": measured["peak_hwm_mb"], **measured}


# --- machine, load, statistics, results ----------------------------------------------


def json_lines(log_path: Path, start: int) -> list[dict[str, Any]]:
    """The JSON object lines a child wrote to ``log_path`` after byte offset ``start``."""
    with open(log_path, "rb") as handle:
        handle.seek(start)
        lines = [ln for ln in handle.read().decode().splitlines() if ln.startswith("{")]
    return [json.loads(line) for line in lines]


def last_json_line(log_path: Path, start: int) -> dict[str, Any]:
    """The last JSON object line a child wrote to ``log_path`` after byte offset ``start``."""
    return json_lines(log_path, start)[-1]


def require_wrk() -> None:
    """Fail early, naming the package, when the wrk load generator is missing."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")


def load_exported_model(meta_path: Path, onnx_path: Path, load_model: Callable[..., Any]) -> Any:
    """The scoring model from an exported META.json and its ONNX file, through ``load_model``."""
    # The loader is the caller's: each child times its own imports (api.runtime pulls in Flask).
    meta = json.loads(meta_path.read_text())
    return load_model(
        meta["name"],
        meta["version"],
        meta.get("run_id"),
        meta["classes"],
        meta["input_schema"],
        onnx_path.read_bytes(),
        onnx_io=meta.get("onnx_io"),
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that shape the results."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _tool_version(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def machine_info() -> dict[str, Any]:
    """Cores, CPU, memory, OS, Python, library versions, wrk, date (UTC)."""
    try:
        mem_kb = int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")
            )
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": library_versions(),
        "wrk": _tool_version(["wrk", "-v"]),
    }


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and the relative spread ``(max - min) / median`` of the rounds."""
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return {"median": None, "min": None, "max": None, "spread": None, "rounds": []}
    median = statistics.median(clean)
    spread = (max(clean) - min(clean)) / median if median else None
    return {
        "median": round(median, digits),
        "min": round(min(clean), digits),
        "max": round(max(clean), digits),
        "spread": None if spread is None else round(spread, 3),
        "rounds": [round(v, digits) for v in clean],
    }


def wrk_summary(
    runs: Sequence[Mapping[str, Any]], percentiles: Sequence[int] = (50, 99)
) -> dict[str, Any]:
    """One server's wrk rounds: req/s and latency percentiles summarized, errors and
    requests added up, and the rounds themselves."""
    return {
        "rps": summarize([r["rps"] for r in runs], 1),
        **{f"p{p}_ms": summarize([r[f"p{p}_ms"] for r in runs], 2) for p in percentiles},
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "runs": list(runs),
    }


def wait_until_still(
    read: Callable[[], Any], still_s: float, poll_s: float, timeout_s: float = 60.0
) -> Any:
    """Poll ``read`` every ``poll_s`` until its value has not moved for ``still_s`` (a
    server's background queues are empty) or ``timeout_s`` pass; its last value."""
    deadline = time.monotonic() + timeout_s
    last, still_since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        now = read()
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= still_s:
            break
    return last


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """``numerator / denominator`` rounded, None when either is missing or not positive."""
    if numerator is None or denominator is None or numerator <= 0 or denominator <= 0:
        return None
    return round(numerator / denominator, digits)


def meets(value: float | None, goal: float) -> bool | None:
    """Whether a measured ratio reaches its goal (None when it could not be measured)."""
    return None if value is None else value >= goal


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def configure_logging() -> None:
    """One line per event on stderr; MLflow's and the store's chatter kept quiet."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for noisy in ("mlflow", "alembic", "urllib3", "registry_bridge", "pipelines", "api"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark entry point takes."""
    parser.add_argument(
        "--quick", action="store_true", help="smoke-test sizes (CI): short runs, small files"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of every server (default 2)"
    )
    parser.add_argument(
        "--family",
        default="logistic_regression",
        help="model family of the benchmark model (default logistic_regression)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default bench/results, or outputs/bench-quick with --quick)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the workspace here and reuse its model next time",
    )


def output_dir(args: argparse.Namespace) -> Path:
    """Where results go: --out, else bench/results (full) or outputs/bench-quick (quick)."""
    if args.out is not None:
        return args.out
    return ROOT / "outputs" / "bench-quick" if args.quick else RESULTS_DIR
