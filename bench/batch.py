"""Batch benchmark: ``/batch-predict`` vs ``mlflow models predict`` vs the in-process limit.

``python -m bench.batch [--quick] [--workers N] [--out DIR]``

CSV files of 100k and 1M rows are made by resampling the data set with seeded noise.
Each size is scored, round by round, by: this project's API (streaming upload of the
file, the CSV answer streamed to disk; peak RSS of the gunicorn master + workers),
``mlflow models predict -t csv --env-manager local`` on the same run (wall time, peak
RSS of that process) and :mod:`bench.inprocess` (chunks in, ONNX, CSV out; no HTTP).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from api.launcher import serving
from bench.common import (
    RssSampler,
    last_json_line,
    load_average,
    meets,
    peak_rss_kb,
    process_tree,
    ratio,
    run_measured,
    summarize,
)
from bench.workspace import BenchModel, Workspace, run_single_part

log = logging.getLogger("bench")

FULL = {"sizes": (100_000, 1_000_000), "rounds": 3, "measure_mlflow_startup": True}
# mlflow models predict costs ~15 s per call whatever the size: one round in quick mode.
QUICK = {"sizes": (20_000,), "rounds": 1, "measure_mlflow_startup": False}
NOISE = 0.05  # of each feature's standard deviation
SEED = 20240611


def make_csv(settings: Any, rows: int, path: Path, seed: int = SEED) -> Path:
    """``rows`` rows resampled from the data set with Gaussian noise, 2 decimals, seeded."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from conf.contract import FEATURES
    from pipelines.data import load_dataset

    if path.exists():
        return path
    features = load_dataset(settings.data).features[list(FEATURES)].to_numpy(dtype=float)
    noisy = noisy_rows(features, np.random.default_rng(seed + rows), rows)
    partial = path.with_suffix(".tmp")
    pa_csv.write_csv(pa.table({name: noisy[:, i] for i, name in enumerate(FEATURES)}), partial)
    partial.replace(path)
    return path


def noisy_rows(features: np.ndarray, rng: np.random.Generator, rows: int) -> np.ndarray:
    """``rows`` rows drawn from ``features`` with Gaussian noise (NOISE of each std), 2 decimals."""
    picked = features[rng.integers(0, len(features), rows)]
    return np.round(picked + rng.normal(0, 1, picked.shape) * features.std(axis=0) * NOISE, 2)


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
    return count


def api_batch(url: str, server_pid: int, source: Path, target: Path) -> dict[str, Any]:
    """Stream ``source`` to ``/batch-predict`` and the CSV answer to ``target``; time and RSS."""
    import requests

    sampler = RssSampler(server_pid, interval_s=0.02)
    with sampler, open(source, "rb") as body, open(target, "wb") as out:
        started = time.perf_counter()
        with requests.post(
            url, data=body, headers={"Content-Type": "text/csv"}, stream=True, timeout=600
        ) as answer:
            if answer.status_code != 200:
                raise RuntimeError(
                    f"/batch-predict answered {answer.status_code}: {answer.content[:300]!r}"
                )
            for block in answer.iter_content(1 << 20):
                out.write(block)
        wall = time.perf_counter() - started
    return {"wall_s": round(wall, 3), **sampler.result()}


def mlflow_predict(ws: Workspace, model: BenchModel, source: Path, target: Path) -> dict[str, Any]:
    """``mlflow models predict`` of the run's sklearn model on ``source``."""
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "predict",
        "-m",
        model.sklearn_uri,
        "-i",
        str(source),
        "-o",
        str(target),
        "-t",
        "csv",
        "--env-manager",
        "local",
    ]
    return run_measured(command, ws.dir / "logs" / "mlflow-predict.log", ws.mlflow_env())


def export_model(ws: Workspace, model: BenchModel) -> tuple[Path, Path]:
    """The published version's ONNX bytes and metadata, for the in-process runner."""
    version = ws.store.get_model_version(ws.model_name, model.version)
    onnx_path = ws.dir / f"v{model.version}.onnx"
    onnx_path.write_bytes(ws.store.read_artifact(version))
    meta_path = ws.dir / f"v{model.version}.json"
    meta_path.write_text(
        json.dumps(
            {
                "name": version.name,
                "version": version.version,
                "run_id": version.run_id,
                "classes": version.classes,
                "input_schema": version.input_schema,
                "onnx_io": version.onnx_io,
            }
        )
    )
    return onnx_path, meta_path


def in_process(
    ws: Workspace, onnx_path: Path, meta_path: Path, source: Path, target: Path, warmup: Path
) -> dict[str, Any]:
    """:mod:`bench.inprocess` in its own process: wall, scoring seconds, peak RSS."""
    log_path = ws.dir / "logs" / "inprocess.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    measured = run_measured(
        [
            sys.executable,
            "-m",
            "bench.inprocess",
            str(onnx_path),
            str(meta_path),
            str(source),
            str(target),
            str(warmup),
        ],
        log_path,
    )
    return {**measured, **last_json_line(log_path, start)}


def run(
    ws: Workspace,
    model: BenchModel,
    quick: bool = False,
    workers: int = 2,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the three ways on each file size; the result document."""
    plan = dict(plan or (QUICK if quick else FULL))
    load_before = load_average()
    data_dir = ws.dir / "data"
    data_dir.mkdir(exist_ok=True)
    files = {
        rows: make_csv(ws.settings, rows, data_dir / f"rows-{rows}.csv") for rows in plan["sizes"]
    }
    tiny = make_csv(ws.settings, 10, data_dir / "rows-10.csv")
    onnx_path, meta_path = export_model(ws, model)
    out_dir = ws.dir / "batch-out"
    out_dir.mkdir(exist_ok=True)
    # MLflow's fixed cost (interpreter, imports, model load) on a 10-row file, for context.
    startup = (
        mlflow_predict(ws, model, tiny, out_dir / "mlflow-10.json")
        if plan["measure_mlflow_startup"]
        else {}
    )
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"api": {}, "mlflow": {}, "inprocess": {}}
    with serving(ws.api_server(workers, name="api-batch"), timeout_s=120) as server:
        url = server.base_url + "/batch-predict"
        api_batch(url, server.pid, tiny, out_dir / "api-warmup.csv")
        for rows, source in files.items():
            for number in range(plan["rounds"]):
                target = out_dir / f"api-{rows}.csv"
                result = api_batch(url, server.pid, source, target)
                result["rows_out"] = _count_lines(target) - 1
                runs["api"].setdefault(rows, []).append(result)
                result = mlflow_predict(ws, model, source, out_dir / f"mlflow-{rows}.json")
                runs["mlflow"].setdefault(rows, []).append(result)
                result = in_process(
                    ws, onnx_path, meta_path, source, out_dir / f"inproc-{rows}.csv", tiny
                )
                runs["inprocess"].setdefault(rows, []).append(result)
                log.info(
                    "%7d rows round %d: api %.2fs (PSS %.0f MB)  mlflow %.2fs (%.0f MB)  "
                    "in-process %.2fs",
                    rows,
                    number + 1,
                    runs["api"][rows][-1]["wall_s"],
                    runs["api"][rows][-1]["peak_pss_total_mb"],
                    runs["mlflow"][rows][-1]["wall_s"],
                    runs["mlflow"][rows][-1]["peak_rss_mb"],
                    result["score_s"],
                )
        workers_hwm = [round(peak_rss_kb(p) * 1024 / 1e6, 1) for p in process_tree(server.pid)]
    load_after = load_average()
    return _document(
        plan, workers, model, files, runs, startup, workers_hwm, load_before, load_after
    )


def _document(
    plan: dict[str, Any],
    workers: int,
    model: BenchModel,
    files: dict[int, Path],
    runs: dict[str, dict[int, list[dict[str, Any]]]],
    startup: dict[str, Any],
    workers_hwm: list[float],
    load_before: list[float],
    load_after: list[float],
) -> dict[str, Any]:
    by_size: dict[str, Any] = {}
    for rows in files:
        api, mlflow, inproc = (runs[k][rows] for k in ("api", "mlflow", "inprocess"))
        api_s = summarize([r["wall_s"] for r in api])
        mlflow_s = summarize([r["wall_s"] for r in mlflow])
        inproc_s = summarize([r["score_s"] for r in inproc])
        inproc_wall = summarize([r["wall_s"] for r in inproc])
        mlflow_work = (
            (mlflow_s["median"] - startup["wall_s"])
            if (mlflow_s["median"] and startup.get("wall_s"))
            else None
        )
        by_size[str(rows)] = {
            "file_mb": round(files[rows].stat().st_size / 1e6, 1),
            "api": {
                "wall_s": api_s,
                "rows_per_s": _rate(rows, api_s["median"]),
                "peak_pss_total_mb": summarize([r["peak_pss_total_mb"] for r in api], 1),
                "peak_rss_total_mb": summarize([r["peak_rss_total_mb"] for r in api], 1),
                "peak_rss_process_mb": summarize([r["peak_rss_process_mb"] for r in api], 1),
                "rows_out": [r["rows_out"] for r in api],
                "runs": api,
            },
            "mlflow_predict": {
                "wall_s": mlflow_s,
                "rows_per_s": _rate(rows, mlflow_s["median"]),
                "wall_minus_startup_s": None if mlflow_work is None else round(mlflow_work, 3),
                "peak_rss_mb": summarize([r["peak_rss_mb"] for r in mlflow], 1),
                "runs": mlflow,
            },
            "inprocess": {
                "score_s": inproc_s,
                "wall_s": inproc_wall,
                "rows_per_s": _rate(rows, inproc_s["median"]),
                "peak_rss_mb": summarize([r["peak_rss_mb"] for r in inproc], 1),
                "runs": inproc,
            },
            "comparison": {
                "speedup_vs_mlflow": ratio(mlflow_s["median"], api_s["median"]),
                "speedup_vs_mlflow_without_its_startup": ratio(mlflow_work, api_s["median"]),
                "share_of_inprocess_limit": ratio(inproc_s["median"], api_s["median"]),
                "goal_3x_mlflow": meets(ratio(mlflow_s["median"], api_s["median"]), 3.0),
                "goal_70pct_of_limit": meets(ratio(inproc_s["median"], api_s["median"]), 0.7),
            },
        }
    largest = str(max(files))
    # "The server process for the API": the worker that ran the batch (its peak RSS).
    api_peak = by_size[largest]["api"]["peak_rss_process_mb"]["max"]
    return {
        "benchmark": "batch",
        "plan": {
            **plan,
            "workers": workers,
            "noise": NOISE,
            "seed": SEED,
            "api": "POST /batch-predict, text/csv body streamed from disk, CSV answer "
            "streamed to disk",
            "mlflow": "mlflow models predict -m <sklearn model> -i in.csv -o out -t csv "
            "--env-manager local (writes JSON predictions only)",
            "inprocess": "bench.inprocess: pyarrow CSV chunks -> onnxruntime -> pyarrow CSV "
            "with the API's columns (score_s excludes interpreter start)",
        },
        "model": model.__dict__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "mlflow_predict_startup": startup,
        # VmHWM of the gunicorn master and each worker at the end (kernel's exact peaks).
        "api_process_peak_rss_mb": workers_hwm,
        "by_rows": by_size,
        "goal_api_peak_under_300mb": None if api_peak is None else api_peak < 300,
    }


def _rate(rows: int, seconds: float | None) -> float | None:
    return round(rows / seconds) if seconds else None


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.batch``: train or reuse the model, measure, write batch.json."""
    return run_single_part("batch", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
