"""A throwaway world for one benchmark run: registry, MLflow store, one model, servers.

The registry is a private embedded server on a free port with its files in the
workspace, MLflow a SQLite store beside it; nothing touches the project's ``.registry``
or ``mlruns``. The model is a real candidate run (``quick_candidate_run``) published
and activated through the real bridge, so every server benchmarks the same run.
Giving ``--workdir`` keeps the workspace and reuses its model on the next run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import yaml

from api.launcher import Server, api_command, free_port
from bench.common import (
    ROOT,
    add_common_arguments,
    configure_logging,
    machine_info,
    output_dir,
    venv_env,
    write_json,
)
from conf.settings import EmbeddedSettings, Settings, load_settings

log = logging.getLogger("bench")

SHARED_DATA = ROOT.parent / "shared" / "data" / "vertebral_column" / "column_3C_weka.csv"
EXPERIMENT = "bench"
# Threads per worker process of the constant endpoints (the 2 workers x 8 threads).
CONSTANT_THREADS = 8


@dataclass(frozen=True)
class BenchModel:
    """One published candidate: its MLflow run and URIs, and its registry version."""

    run_id: str
    family: str
    sklearn_uri: str
    onnx_uri: str
    version: int
    onnx_bytes: int


def data_path() -> Path | None:
    """VERTEBRAL_DATA, else the shared copy beside the repository, else None (download)."""
    given = os.environ.get("VERTEBRAL_DATA")
    if given:
        return Path(given)
    return SHARED_DATA if SHARED_DATA.is_file() else None


class Workspace:
    """Temp dir + embedded registry + MLflow store + settings; a context manager."""

    def __init__(self, workdir: Path | None = None):
        self.keep = workdir is not None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="bench-")).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.embedded = EmbeddedSettings(port=free_port(), data_dir=self.dir / "registry")
        self.admin_token = secrets.token_hex(16)
        self._settings: Settings | None = None
        self.store: Any = None
        self._client: Any = None

    # --- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> Workspace:
        from registry_bridge import database
        from registry_bridge.store import ModelStore

        database.start_embedded(self.embedded)
        env = {
            "MONGODB_URI": database.embedded_uri(self.embedded),
            "REGISTRY_DB": "bench",
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.dir / 'mlflow' / 'mlflow.db'}",
            "OUTPUT_DIR": str(self.dir / "outputs"),
        }
        data = data_path()
        if data is not None:
            env["VERTEBRAL_DATA"] = str(data)
        (self.dir / "mlflow").mkdir(exist_ok=True)
        loaded = load_settings(env=env)
        self._settings = replace(
            loaded,
            mlflow=replace(
                loaded.mlflow,
                artifact_root=self.dir / "mlflow" / "artifacts",
                experiment=EXPERIMENT,
            ),
        )
        self._client = database.connect(self.settings.registry)
        self.store = ModelStore(self._client, self.settings)
        log.info("workspace %s (registry %s)", self.dir, env["MONGODB_URI"])
        return self

    def __exit__(self, *exc: Any) -> None:
        from registry_bridge import database

        if self._client is not None:
            self._client.close()
        database.stop_embedded(self.embedded)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def settings(self) -> Settings:
        """The workspace's settings; they exist once the workspace is entered."""
        if self._settings is None:
            raise RuntimeError("enter the Workspace (with Workspace() as ws) before using it")
        return self._settings

    # --- the model -----------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.settings.api.model_name

    def prepare_model(self, family: str = "logistic_regression") -> BenchModel:
        """Train (or reuse) one candidate run, publish it and make it the active version."""
        cache = self.dir / f"model-{family}.json"
        run_id = json.loads(cache.read_text())["run_id"] if cache.exists() else None
        if run_id is None:
            from pipelines.candidate import quick_candidate_run

            log.info("training a %s candidate run", family)
            run_id = quick_candidate_run(self.settings, family=family, experiment=EXPERIMENT)
            cache.write_text(json.dumps({"run_id": run_id}))
        model = self.publish(run_id)
        self.store.set_active_version(
            self.model_name, model.version, by="bench", reason="benchmark model"
        )
        return model

    def publish(self, run_id: str, new_version: bool = False) -> BenchModel:
        """Publish a candidate run (idempotent unless ``new_version``)."""
        from mlflow.tracking import MlflowClient

        from registry_bridge.publish import publish_run

        result = publish_run(self.store, self.settings, run_id, new_version=new_version, by="bench")
        tags = MlflowClient(self.settings.mlflow.tracking_uri).get_run(run_id).data.tags
        version = result.version
        return BenchModel(
            run_id,
            tags["model_family"],
            tags["sklearn_model_uri"],
            tags["onnx_model_uri"],
            version.version,
            version.size_bytes,
        )

    def large_model_run(self, rows: int, trees: int, seed: int = 7) -> str:
        """A random-forest candidate run whose ONNX is large (size grows with ``rows * trees``).

        Fitted on ``rows`` rows resampled from the training split with 5 % noise and 20 %
        of the labels shuffled, so the trees grow deep; evaluated, converted, checked for
        ONNX parity and logged like any candidate (``log_candidate``).
        """
        cache = self.dir / f"model-large-{rows}-{trees}.json"
        if cache.exists():
            return json.loads(cache.read_text())["run_id"]
        from pipelines.candidate import log_candidate, split_dataset
        from pipelines.data import load_dataset
        from pipelines.families import build_pipeline
        from pipelines.tracking import ensure_experiment

        settings = self.settings
        dataset = load_dataset(settings.data)
        split = split_dataset(dataset, settings.training.test_size, settings.training.seed)
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, len(split.x_train), rows)
        spread = split.x_train.std().to_numpy()
        x = (
            split.x_train.iloc[pick].to_numpy()
            + rng.normal(0, 1, (rows, spread.size)) * spread * 0.05
        )
        y = split.y_train.iloc[pick].to_numpy().copy()
        shuffled = rng.random(rows) < 0.2
        y[shuffled] = rng.choice(np.unique(y), int(shuffled.sum()))
        params = {
            "rf_n_estimators": trees,
            "rf_max_depth": None,
            "rf_min_samples_leaf": 1,
            "rf_max_features": 0.5,
        }
        log.info("training a large random forest (%d trees on %d resampled rows)", trees, rows)
        pipeline = build_pipeline("random_forest", params, settings.training.seed)
        pipeline.fit(pd.DataFrame(x, columns=split.x_train.columns), y)
        experiment_id = ensure_experiment(settings.mlflow, EXPERIMENT)
        run_id = log_candidate(
            pipeline,
            "random_forest",
            {**params, "bench_rows": rows},
            split,
            dataset,
            experiment_id=experiment_id,
        )
        cache.write_text(json.dumps({"run_id": run_id}))
        return run_id

    # --- servers -------------------------------------------------------------------------

    def api_server(
        self,
        workers: int,
        name: str = "api",
        config: dict[str, Any] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        """This project's API (``python -m api``) on a free port, serving the workspace's
        registry; ``config`` (e.g. ``{"api": {"pointer_lease_ms": 0}}``) over the defaults.
        ``cwd`` runs the API of another checkout (``bench.peers.baseline_checkout``) with
        this interpreter: ``python -m`` imports from the working directory first."""
        from registry_bridge import database

        port = free_port()
        extra = {}
        if config:
            path = self.dir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config), encoding="utf-8")
            extra["VERTEBRAL_CONFIG"] = str(path)
        env = venv_env(
            {
                **extra,
                "MONGODB_URI": database.embedded_uri(self.embedded),
                "REGISTRY_DB": "bench",
                "MODEL_NAME": self.model_name,
                "API_HOST": "127.0.0.1",
                "API_PORT": str(port),
                "API_WORKERS": str(workers),
                "API_ADMIN_TOKEN": self.admin_token,
                "OUTPUT_DIR": str(self.dir / "outputs"),
                "MLFLOW_TRACKING_URI": self.settings.mlflow.tracking_uri,
            }
        )
        return Server(name, api_command(), port, self.dir / "logs" / f"{name}.log", env, cwd=cwd)

    def second_name(self, model: BenchModel) -> str:
        """The benchmark's run published (idempotent) and activated under a second name,
        ``<MODEL_NAME>-b``: the two-model round's other name, the same scoring cost."""
        from registry_bridge.publish import publish_run

        name = f"{self.model_name}-b"
        result = publish_run(self.store, self.settings, model.run_id, name=name, by="bench")
        self.store.set_active_version(
            name, result.version.version, by="bench", reason="benchmark, second name"
        )
        return name

    def mlflow_server(self, model: BenchModel, workers: int) -> Server:
        """``mlflow models serve`` of the run's sklearn model, local environment, same workers."""
        port = free_port()
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "models",
            "serve",
            "-m",
            model.sklearn_uri,
            "--env-manager",
            "local",
            "-w",
            str(workers),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        return Server(
            "mlflow", command, port, self.dir / "logs" / "mlflow-serve.log", self.mlflow_env()
        )

    def mlflow_env(self) -> dict[str, str]:
        """Environment for the mlflow CLI: the workspace's tracking store, venv on PATH."""
        return venv_env(
            {
                "MLFLOW_TRACKING_URI": self.settings.mlflow.tracking_uri,
                # progress bars would flood the logs
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            }
        )

    def constant_server(self, workers: int, server: str = "gthread") -> Server:
        """A constant answer (``bench.constant_app``) under stock gunicorn ``gthread``
        (``server="gthread"``) or granian's WSGI interface (``"granian"``), ``workers``
        processes of ``CONSTANT_THREADS`` threads each: what the HTTP stack alone costs;
        or with no Flask under granian's RSGI (``"rsgi"``, ``bench.constant_rsgi``: the
        chosen server's floor)."""
        port = free_port()
        bin_dir = Path(sys.executable).parent
        if server == "gthread":
            command = [
                str(bin_dir / "gunicorn"),
                "--workers",
                str(workers),
                "--worker-class",
                "gthread",
                "--threads",
                str(CONSTANT_THREADS),
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                # gunicorn >= 25.1 would take over a per-user control socket
                "--no-control-socket",
                "bench.constant_app:app",
            ]
        elif server in ("granian", "rsgi"):
            wsgi = server == "granian"  # else RSGI, no Flask: bench.constant_rsgi
            command = [
                str(bin_dir / "granian"),
                *("--interface", "wsgi" if wsgi else "rsgi"),
                *("--workers", str(workers)),
                *(("--blocking-threads", str(CONSTANT_THREADS)) if wsgi else ()),
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--log-level", "warning"),
                "bench.constant_app:app" if wsgi else "bench.constant_rsgi:app",
            ]
        else:
            raise ValueError(f"unknown server {server!r} (gthread, granian or rsgi)")
        name = f"constant-{server}"
        return Server(name, command, port, self.dir / "logs" / f"{name}.log", venv_env())

    def mlserver_server(self, model: BenchModel, workers: int, bin_dir: Path) -> Server:
        """MLServer (``bin_dir``: its environment, ``bench.peers.mlserver_venv``) serving the
        run's sklearn MLflow model with its MLflow runtime under the registry's model name,
        ``workers`` inference processes (``parallel_workers``); HTTP only on a free port."""
        import mlflow.artifacts

        root = self.dir / "mlserver"
        model_dir = root / "model"
        if not (model_dir / "MLmodel").is_file():
            shutil.rmtree(model_dir, ignore_errors=True)
            downloaded = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=model.sklearn_uri,
                    dst_path=str(root / "download"),
                    tracking_uri=self.settings.mlflow.tracking_uri,
                )
            )
            shutil.move(str(downloaded), model_dir)
        port = free_port()
        settings = {
            "debug": False,
            "host": "127.0.0.1",
            "http_port": port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": workers,
            "load_models_at_startup": True,
        }
        (root / "settings.json").write_text(json.dumps(settings, indent=1))
        model_settings = {
            "name": self.model_name,
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(model_dir)},
        }
        (root / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
        env = dict(os.environ)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env.pop("MLFLOW_TRACKING_URI", None)
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        return Server(
            "mlserver",
            [str(bin_dir / "mlserver"), "start", str(root)],
            port,
            self.dir / "logs" / "mlserver.log",
            env,
            cwd=root,
        )


class BenchPart(Protocol):
    """What every part of the bench is (``bench.online.run``, ``bench.batch.run``…): it
    measures on the workspace's model and returns its result document, which ``python -m
    bench`` completes with the machine and the command and writes to ``<part>.json``.

    ``quick`` picks the part's small plan (CI, tests); ``plan`` replaces the plan outright.
    """

    def __call__(
        self,
        ws: Workspace,
        model: BenchModel,
        quick: bool = False,
        workers: int = 2,
        plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...


def run_single_part(
    name: str,
    run: BenchPart,
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    make_plan: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> int:
    """``python -m bench.<name>``: train or reuse the model, measure one part, write <name>.json.

    ``add_arguments`` adds the part's own options, ``make_plan`` turns them into its plan.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=f"The {name} benchmark alone."
    )
    add_common_arguments(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    started = time.perf_counter()
    with Workspace(args.workdir) as ws:
        model = ws.prepare_model(args.family)
        plan = make_plan(args) if make_plan is not None else None
        document = run(ws, model, args.quick, args.workers, plan)
    document.update(
        machine=machine_info(), quick=args.quick, elapsed_s=round(time.perf_counter() - started, 1)
    )
    path = write_json(output_dir(args) / f"{name}.json", document)
    log.info("wrote %s", path)
    return 0
