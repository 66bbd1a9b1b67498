"""Check the Optuna study end to end: the CLI, its MLflow runs, plots, models and the UI.

One small study (7 trials over the six families) runs once for the module through
``python -m pipelines.train``'s command; the tests read what it left in MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import requests
import yaml
from click.testing import CliRunner
from conftest import ROOT, data_path, free_port
from mlflow.tracking import MlflowClient

from conf.contract import FAMILIES, PARITY_TOLERANCE, cv_mean_key, cv_std_key
from conf.settings import Settings, load_settings
from pipelines.candidate import onnx_predict, split_dataset
from pipelines.data import load_dataset
from pipelines.metrics import METRICS
from pipelines.plots import PLOT_FILES
from pipelines.train import main

# SVC(probability=True) is deprecated in scikit-learn 1.9 but is what skl2onnx converts.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

TRIALS = 7


@dataclass
class StudyRun:
    settings: Settings
    env: dict[str, str]
    output: str
    parent_run_id: str
    client: MlflowClient


def _run_cli(tmp: Path, *extra: str) -> StudyRun:
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mlflow": {
                    "tracking_uri": f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
                    "artifact_root": str(tmp / "mlruns" / "artifacts"),
                },
                "training": {"reports_dir": str(tmp / "reports")},
            }
        )
    )
    env = {
        "VERTEBRAL_CONFIG": str(config),
        "VERTEBRAL_DATA": str(data_path()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}",
    }
    result = CliRunner().invoke(main, ["--trials", str(TRIALS), "--seed", "7", *extra], env=env)
    assert result.exit_code == 0, result.output + str(result.exception)
    settings = load_settings(config, env=env, overrides={"training.seed": 7})
    parent = next(
        line.split()[2] for line in result.output.splitlines() if line.startswith("Parent run:")
    )
    return StudyRun(
        settings, env, result.output, parent, MlflowClient(settings.mlflow.tracking_uri)
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyRun:
    return _run_cli(tmp_path_factory.mktemp("study"))


def _children(study: StudyRun) -> list:
    parent = study.client.get_run(study.parent_run_id)
    return study.client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{study.parent_run_id}'",
        max_results=1000,
    )


def test_parent_run_holds_the_study_setup(study: StudyRun) -> None:
    """Check that the parent run has the search space, data, split seed and winner."""
    run = study.client.get_run(study.parent_run_id)
    dataset = load_dataset(study.settings.data)
    assert run.data.tags["run_type"] == "study"
    assert run.data.tags["data_fingerprint"] == dataset.fingerprint
    assert run.data.params["split_seed"] == "7"
    assert run.data.params["data_fingerprint"] == dataset.fingerprint
    [data_input] = run.inputs.dataset_inputs
    assert data_input.dataset.name == "vertebral-column-3C"
    space = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=study.parent_run_id,
                artifact_path="search_space.json",
                tracking_uri=study.settings.mlflow.tracking_uri,
            )
        ).read_text()
    )
    assert space["model_family"] == list(FAMILIES)
    assert "svc_gamma" in space["svc"]

    best = study.client.get_run(run.data.tags["best_run_id"])
    assert best.data.tags["candidate"] == "true"
    assert run.data.params["model_family"] == best.data.params["model_family"]
    for name, value in best.data.params.items():
        assert run.data.params[name] == value
    assert run.data.metrics["test_f1_macro"] == best.data.metrics["test_f1_macro"]


def test_one_nested_run_per_trial_with_its_metrics(study: StudyRun) -> None:
    """Check that every trial has a nested run with params, CV metrics, state, duration."""
    children = _children(study)
    assert len(children) == TRIALS
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == list(range(TRIALS))
    for run in children:
        assert run.data.tags["state"] in ("complete", "pruned")
        assert run.data.params["model_family"] in FAMILIES
        assert run.data.metrics["duration_seconds"] >= 0
        for name in METRICS:
            assert cv_mean_key(name) in run.data.metrics
            assert cv_std_key(name) in run.data.metrics
        assert 0 < run.data.metrics["cv_f1_macro_mean"] <= 1
    # The six families are all tried, each first with its default hyperparameters.
    assert {r.data.params["model_family"] for r in children} == set(FAMILIES)


def test_best_trial_of_each_family_is_a_candidate(study: StudyRun) -> None:
    """Check that each family's best complete trial is tagged candidate per the contract."""
    children = _children(study)
    candidates = [r for r in children if r.data.tags.get("candidate") == "true"]
    assert {r.data.tags["model_family"] for r in candidates} == set(FAMILIES)
    for run in candidates:
        family = run.data.tags["model_family"]
        same_family = [
            r
            for r in children
            if r.data.params["model_family"] == family and r.data.tags["state"] == "complete"
        ]
        assert run.data.metrics["cv_f1_macro_mean"] == max(
            r.data.metrics["cv_f1_macro_mean"] for r in same_family
        )
        assert run.data.tags["onnx_model_uri"].startswith("models:/m-")
        assert run.data.tags["sklearn_model_uri"].startswith("models:/m-")
        assert "test_roc_auc_ovr" in run.data.metrics
        assert "test_recall_Hernia" in run.data.metrics
    winner = study.client.get_run(
        study.client.get_run(study.parent_run_id).data.tags["best_run_id"]
    )
    assert winner.data.metrics["cv_f1_macro_mean"] == max(
        r.data.metrics["cv_f1_macro_mean"] for r in candidates
    )


def test_plots_are_logged_and_written(study: StudyRun) -> None:
    """Check that every plot is a PNG in the parent run's plots/ and in the reports dir."""
    logged = {Path(a.path).name for a in study.client.list_artifacts(study.parent_run_id, "plots")}
    assert logged == set(PLOT_FILES)
    for name in PLOT_FILES:
        path = study.settings.training.reports_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000  # a drawn figure, not an empty canvas


def test_winner_in_both_flavours_with_onnx_parity(study: StudyRun) -> None:
    """Check that the winner's sklearn and ONNX models load and agree on the test split."""
    winner = study.client.get_run(
        study.client.get_run(study.parent_run_id).data.tags["best_run_id"]
    )
    mlflow.set_tracking_uri(study.settings.mlflow.tracking_uri)
    dataset = load_dataset(study.settings.data)
    split = split_dataset(dataset, study.settings.training.test_size, 7)
    sk_model = mlflow.sklearn.load_model(winner.data.tags["sklearn_model_uri"])
    onnx_dir = Path(mlflow.artifacts.download_artifacts(winner.data.tags["onnx_model_uri"]))
    labels, probabilities = onnx_predict(onnx.load(str(onnx_dir / "model.onnx")), split.x_test)
    assert list(labels) == list(sk_model.predict(split.x_test))
    assert np.max(np.abs(probabilities - sk_model.predict_proba(split.x_test))) <= PARITY_TOLERANCE
    for uri in (winner.data.tags["sklearn_model_uri"], winner.data.tags["onnx_model_uri"]):
        info = mlflow.models.get_model_info(uri)
        assert info.signature is not None
        assert info.saved_input_example_info is not None
    # Artifacts live under the configured root, not in the working directory.
    assert winner.info.artifact_uri.startswith(
        Path(study.settings.mlflow.artifact_root).resolve().as_uri()
    )


def test_output_has_a_line_per_trial_and_the_summary(study: StudyRun) -> None:
    """Check that the CLI prints a progress line per trial, the table and the next step."""
    trial_lines = [line for line in study.output.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == TRIALS
    assert all(
        any(f in line for f in FAMILIES)
        and ("complete" in line or "pruned" in line)
        and line.rstrip().endswith("s")
        for line in trial_lines
    )
    assert "Best trial per model family" in study.output
    table = [
        line.split()
        for line in study.output.splitlines()
        if line.split()[:1] and line.split()[0].isdigit()
    ]
    assert [row[1] for row in table] and sorted(row[1] for row in table) == sorted(FAMILIES)
    assert f"Parent run: {study.parent_run_id}" in study.output
    assert "make mlflow-ui" in study.output


def test_same_seed_and_data_give_the_same_result(study: StudyRun, tmp_path: Path) -> None:
    """Check that a second study with the same seed picks the same params and test scores."""
    again = _run_cli(tmp_path)
    first = study.client.get_run(study.parent_run_id).data
    second = again.client.get_run(again.parent_run_id).data
    assert first.tags["best_model_family"] == second.tags["best_model_family"]
    family_params = {
        k: v
        for k, v in first.params.items()
        if "_" in k and k.split("_")[0] in ("lr", "svc", "knn", "rf", "gb")
    }
    assert family_params
    assert family_params == {k: second.params[k] for k in family_params}
    tests = {k: v for k, v in first.metrics.items() if k.startswith("test_")}
    assert tests == {k: second.metrics[k] for k in tests}


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    """Check that a bad --data or --trials ends with one line and exit code 1."""
    runner = CliRunner()
    missing = runner.invoke(main, ["--data", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: data.path: no such file: {tmp_path / 'nope.csv'}"
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("pelvic_incidence,class\n1,Hernia\n")
    invalid = runner.invoke(
        main,
        ["--data", str(bad), "--trials", "1"],
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"},
    )
    assert invalid.exit_code == 1
    assert len(invalid.stderr.strip().splitlines()) == 1
    assert "Traceback" not in invalid.output
    zero = runner.invoke(main, ["--trials", "0"])
    assert zero.exit_code == 1
    assert "training.trials" in zero.stderr


def test_mlflow_ui_lists_the_experiment_and_runs(study: StudyRun) -> None:
    """Check that the server started by pipelines.mlflow_ui serves the study's runs."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.mlflow_ui", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **study.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = requests.get(
                    f"{base}/experiments/get-by-name",
                    params={"experiment_name": "vertebral-column"},
                    timeout=5,
                )
                if answer.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, process.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "MLflow UI did not answer within 90 s"
            time.sleep(0.5)
        experiment = answer.json()["experiment"]
        runs = requests.post(
            f"{base}/runs/search",
            json={"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
            timeout=10,
        ).json()["runs"]
        run_ids = {r["info"]["run_id"] for r in runs}
        assert study.parent_run_id in run_ids
        assert len(run_ids) == TRIALS + 1
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        # The server runs in its own session: stop the whole group we started.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_mlflow_ui_command_uses_an_absolute_store_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that the UI serves the configured store, made absolute, on 127.0.0.1:5000."""
    from conf.settings import MlflowSettings
    from pipelines.mlflow_ui import server_command

    monkeypatch.chdir(tmp_path)
    command = server_command(
        MlflowSettings(
            tracking_uri="sqlite:///mlruns/mlflow.db", artifact_root=Path("mlruns/artifacts")
        )
    )
    option = dict(zip(command[4::2], command[5::2], strict=False))
    assert option["--backend-store-uri"] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert option["--default-artifact-root"] == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert (option["--host"], option["--port"]) == ("127.0.0.1", "5000")
