"""``make demo`` / ``python -m demo``: train, publish, activate, serve and predict, for real.

Steps (each timed): check the data; reach the registry database (embedded or
MONGODB_URI); run a demo-sized Optuna study tracked in MLflow; publish the two best
candidate runs with the ``bridge`` CLI and activate the best; start the API under
granian; over HTTP list /models, predict sample patients; ask the promotion gate to
activate the other version (refused, then forced with a reason) and show the answers
change version, roll back, send the held-out patients (without
labels) to /batch-predict, which writes ``outputs/predicciones.csv``. Then it stops
what it started, writes ``reports/demo/index.html`` and exits 0 — or exits 1 at the
first failure, naming it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd

from api.launcher import Server, api_command, free_port, port_is_free
from conf.settings import DEFAULT_CONFIG, Settings, SettingsError, load_settings
from conf.uris import mask_uri
from demo import lab as demo_lab
from demo import monitoring as demo_monitoring
from demo.http import ApiClient, Exchange
from demo.report import write_report
from demo.run import DemoRun
from pipelines.data import DataError
from pipelines.results import StudyResult
from pipelines.study import run_study
from pipelines.train import ProgressPrinter, candidate_printer, format_report
from registry_bridge import database
from registry_bridge.errors import RegistryError

BRIDGE = str(Path(sys.executable).with_name("bridge"))
READY_TIMEOUT_S = 90


class DemoFailure(RuntimeError):
    """A step did not do what it should; the message says which and why."""


@contextmanager
def step(run: DemoRun, number: int, title: str) -> Iterator[None]:
    """Print the step's title, time it, and record the time for the report."""
    click.secho(f"\n== {number}. {title}", bold=True)
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    run.timings.append((title, elapsed))
    click.echo(f"   ({elapsed:.1f}s)")


def bridge(
    run: DemoRun, *args: str, env: dict[str, str], expected_exit: int | tuple[int, ...] = 0
) -> str:
    """Run one ``bridge`` command as a user would type it; its output is shown and kept
    (``expected_exit``: the exit status, or those accepted; stdout and stderr returned
    together when an error status is accepted)."""
    command = ["bridge", *args]
    click.echo(f"$ {' '.join(command)}")
    result = subprocess.run([BRIDGE, *args], capture_output=True, text=True, env=env, timeout=300)
    output = (result.stdout + result.stderr).rstrip()
    if "--json" in args:  # hundreds of lines: the report keeps them, the terminal says where
        click.echo(f"({len(output.splitlines())} lines of JSON, in the report)")
    else:
        click.echo(output)
    run.cli_outputs.append((" ".join(command), output))
    accepted = expected_exit if isinstance(expected_exit, tuple) else (expected_exit,)
    if result.returncode not in accepted:
        raise DemoFailure(
            f"`{' '.join(command)}` failed: {output.splitlines()[-1] if output else ''}"
        )
    return result.stdout if result.returncode == 0 else output


def expect(exchange: Exchange, status: int = 200) -> Any:
    """The exchange's JSON body, or a DemoFailure naming the call and its answer."""
    if exchange.status != status:
        raise DemoFailure(
            f"{exchange.title}: expected HTTP {status}, got {exchange.status}: "
            f"{exchange.body[:300]}"
        )
    return exchange.json() if exchange.body.lstrip().startswith(("{", "[")) else exchange.body


def show_alias(run: DemoRun, name: str, expected: int) -> None:
    """Print where MLflow's alias points now: the registry mirror moves it on every change."""
    from mlflow.tracking import MlflowClient

    mlflow_settings = run.settings.mlflow
    client = MlflowClient(mlflow_settings.tracking_uri, mlflow_settings.tracking_uri)
    found = client.get_model_version_by_alias(name, mlflow_settings.alias)
    registry_version = int(found.tags.get("registry_version", 0))
    line = (
        f"MLflow models:/{name}@{mlflow_settings.alias} -> MLflow version {found.version} "
        f"(registry v{registry_version})"
    )
    click.echo(line)
    run.aliases.append(line)
    if registry_version != expected:
        raise DemoFailure(
            f"MLflow's @{mlflow_settings.alias} names v{registry_version}, "
            f"the registry's active version is v{expected}"
        )


def start_api(settings: Settings, env: dict[str, str], log_path: Path) -> Server:
    """Start ``python -m api`` (api.launcher, as the tests and the bench do) on the
    configured port, or a free one when it is taken, and wait until /ready answers."""
    host = settings.api.host
    port = settings.api.port if port_is_free(host, settings.api.port) else free_port(host)
    env = {**env, "API_PORT": str(port)}
    # The demo's working directory, not the repository's: relative outputs land beside it.
    server = Server("api", api_command(), port, log_path, env, cwd=Path.cwd(), host=host)
    server.start()
    try:
        server.wait_ready("/ready", timeout_s=READY_TIMEOUT_S)
    except RuntimeError as exc:
        server.stop()
        raise DemoFailure(str(exc).splitlines()[0]) from None
    return server


def sample_patients(study: StudyResult) -> list[dict[str, float]]:
    """One held-out patient of each class, as JSON records."""
    x_test, y_test = study.split.x_test, study.split.y_test
    rows = []
    for label in sorted(set(y_test)):
        index = y_test[y_test == label].index[0]
        rows.append({k: round(float(v), 4) for k, v in x_test.loc[index].items()})
    return rows


def write_batch_input(study: StudyResult, directory: Path) -> Path:
    """The held-out split without labels, with a patient id: the 'new patients' CSV."""
    directory.mkdir(parents=True, exist_ok=True)
    table = study.split.x_test.reset_index(drop=True).copy()
    table.insert(0, "patient_id", [f"P{i + 1:03d}" for i in range(len(table))])
    path = directory / "new_patients.csv"
    table.to_csv(path, index=False)
    return path


@dataclass
class Started:
    """What the demo started and must stop, whatever happens."""

    embedded_db: bool = False
    api: Server | None = None
    client: ApiClient | None = None

    def stop(self, settings: Settings) -> None:
        """Stop the API and the embedded database if the demo started them."""
        if self.api is not None:
            self.api.stop()
        if self.embedded_db:
            database.stop_embedded(settings.registry.embedded)


@dataclass(frozen=True)
class Published:
    """The two versions the demo published: the best run's (activated) and the runner-up's."""

    best: int
    other: int


def run_demo(settings: Settings, trials: int, report_dir: Path) -> DemoRun:
    """Every step in order; what was started is stopped even when a step fails."""
    run = DemoRun(settings)
    token = settings.api.admin_token or secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "API_ADMIN_TOKEN": token,  # the demo's API shows the admin token at work
        "CAPTURE_SAMPLE_PERCENT": "100",  # every request is kept: step 9 watches them
        "MODEL_NAME": settings.api.model_name,  # the API and bridge work on the run's model
    }
    gate_rule = with_promotion_rules(settings, env, report_dir)
    started = Started()
    try:
        with step(run, 1, "Registry database"):
            started.embedded_db = reach_registry(settings)
        with step(run, 2, f"Train: Optuna study, {trials} trials, tracked in MLflow"):
            study = train(run, trials)
        with step(run, 3, "Publish the two best runs to MongoDB GridFS; activate the best"):
            versions = publish_two_best(run, study, env)
        with step(run, 4, "Start the API under granian"):
            started.api, client = serve(run, env, token, report_dir)
            started.client = client
        patients = sample_patients(study)
        with step(run, 5, "List models and predict sample patients"):
            predict_samples(run, client, patients, versions.best)
        with step(
            run, 6, f"Activate version {versions.other} through the promotion gate, roll back"
        ):
            activate_and_roll_back(run, client, patients, versions, env, gate_rule)
        with step(run, 7, "Batch prediction of the held-out patients (POST /batch-predict)"):
            batch_predict(run, study, client)
        with step(run, 8, "Versions and activation history from the registry"):
            record_history(run, client, env, versions)
        with step(run, 9, f"Monitoring: a batch with {demo_monitoring.SHIFTED_FEATURE} shifted"):
            watch_drift(run, study, client, env, report_dir)
        if settings.data.variant == "2C":
            with step(run, 10, "The lab's model against ours, on the same test rows"):
                compare_with_lab(run)
    finally:
        started.stop(settings)
        run.exchanges = started.client.exchanges if started.client is not None else []
    return run


def compare_with_lab(run: DemoRun) -> None:
    """2C only: the lab's own model trained and scored on the same test rows as ours."""
    try:
        run.lab = demo_lab.train_lab_model(run)
    except demo_lab.LabComparisonError as exc:
        raise DemoFailure(str(exc)) from None


def reach_registry(settings: Settings) -> bool:
    """Connect to the registry database; True when the demo started the embedded one."""
    registry = settings.registry
    started = False
    if registry.mongodb_uri:
        click.echo(f"MONGODB_URI: {mask_uri(registry.mongodb_uri)}")
    else:
        started = not database.embedded_status(registry.embedded).running
    database.connect(registry).close()
    if not registry.mongodb_uri:
        click.echo(database.embedded_status(registry.embedded).describe())
    return started


def train(run: DemoRun, trials: int) -> StudyResult:
    """The demo-sized study; at least two candidate runs are needed to compare versions."""
    objective = run.settings.training.objective
    study_started = time.perf_counter()
    study = run.study = run_study(
        run.settings,
        on_trial=ProgressPrinter(trials, objective),
        on_candidate=candidate_printer(objective),
    )
    run.study_report = format_report(study, time.perf_counter() - study_started)
    click.echo(run.study_report)
    if len(study.candidates) < 2:
        raise DemoFailure("the study produced fewer than two candidate runs")
    return study


def publish_two_best(run: DemoRun, study: StudyResult, env: dict[str, str]) -> Published:
    """Publish the two best candidates with the ``bridge`` CLI and activate the best."""
    name = run.settings.api.model_name
    best, second = study.candidates[:2]
    bridge(
        run,
        *("publish", name, "--run-id", best.run_id, "--activate"),
        *("--reason", "demo: best cross-validated run"),
        env=env,
    )
    bridge(run, "publish", name, "--run-id", second.run_id, env=env)
    bridge(run, "list", name, env=env)
    listed = json.loads(bridge(run, "list", name, "--json", env=env))
    by_run = {v["run_id"]: v for v in listed}
    versions = Published(by_run[best.run_id]["version"], by_run[second.run_id]["version"])
    show_alias(run, name, versions.best)
    return versions


def serve(
    run: DemoRun, env: dict[str, str], token: str, report_dir: Path
) -> tuple[Server, ApiClient]:
    """Start the API and a client that records every exchange for the report."""
    server = start_api(run.settings, env, report_dir / "api.log")
    click.echo(f"API ready at {server.base_url} (pid {server.pid})")
    run.console_url = f"{server.base_url}/"
    click.echo(f"console: {run.console_url}")
    return server, ApiClient(server.base_url, token=token)


def _predict(client: ApiClient, title: str, patients: list[dict[str, float]]) -> dict[str, Any]:
    return expect(client.call(title, "POST", "/predict", json_body={"records": patients}))


def _answered_by(answer: dict[str, Any], version: int, when: str) -> None:
    if answer["model"]["version"] != version:
        raise DemoFailure(
            f"{when} /predict answered with version {answer['model']['version']}, "
            f"expected {version}"
        )


def predict_samples(
    run: DemoRun, client: ApiClient, patients: list[dict[str, float]], best: int
) -> None:
    """/models shows the best version active, and /predict answers with it."""
    name = run.settings.api.model_name
    models = expect(client.call("List every version (GET /models)", "GET", f"/models?name={name}"))
    active = [m["version"] for m in models["models"] if m["active"]]
    click.echo(f"/models: {models['count']} version(s), active {active}")
    if active != [best]:
        raise DemoFailure(f"expected version {best} active, /models says {active}")
    answer = _predict(client, "Predict sample patients (POST /predict)", patients)
    show_predictions(answer)
    _answered_by(answer, best, "at first")


# The demo's promotion rule (docs/promotion.md): a version must beat the one in production
# by 5 points of macro F1 on the reference set (the first version's test split).
DEMO_RULE = {"f1_macro": {"min_absolute_change": 0.05}}


def with_promotion_rules(settings: Settings, env: dict[str, str], report_dir: Path) -> str | None:
    """Give the demo's API and ``bridge`` the DEMO_RULE (unless rules are configured): the
    config file in use plus the rule, written beside the report. The rule, as shown."""
    if settings.promotion.rules:
        return None
    import yaml

    tree: dict[str, Any] = {}
    if settings.config_file.resolve() != DEFAULT_CONFIG.resolve():
        tree = yaml.safe_load(settings.config_file.read_text(encoding="utf-8")) or {}
    tree["promotion"] = {"rules": DEMO_RULE}
    report_dir.mkdir(parents=True, exist_ok=True)
    config = report_dir / "demo-config.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    env["VERTEBRAL_CONFIG"] = str(config.resolve())
    return "f1_macro: {min_absolute_change: 0.05}"


def activate_and_roll_back(
    run: DemoRun,
    client: ApiClient,
    patients: list[dict[str, float]],
    versions: Published,
    env: dict[str, str],
    gate_rule: str | None,
) -> None:
    """The gate judges the runner-up against the best on the reference set; activated (by
    the gate or forced with a reason), it changes the answers' version; a rollback, never
    gated, brings the best back."""
    name = run.settings.api.model_name
    if gate_rule:
        click.echo(f"promotion rule: {gate_rule} (a new version must beat production by 0.05)")
    bridge(run, "reference", "show", name, env=env)
    said = bridge(
        run,
        *("activate", name, str(versions.other), "--reason", "demo: try the runner-up"),
        env=env,
        expected_exit=(0, 1),
    )
    if "the promotion gate refused" in said:
        forced = expect(
            client.call(
                f"Activate version {versions.other} anyway (POST /models/activate, forced)",
                "POST",
                "/models/activate",
                admin=True,
                json_body={
                    "name": name,
                    "version": versions.other,
                    "force": True,
                    "reason": "demo: compare with the runner-up although the gate refused it",
                },
            )
        )
        click.echo(
            f"forced: v{forced['active_version']} active, the audit entry says FORCED with the "
            "reason and both versions' f1_macro"
        )
    elif gate_rule:  # the runner-up beat the best by the margin: the best cannot come back so
        bridge(
            run,
            *("activate", name, str(versions.best), "--reason", "demo: back to the best"),
            env=env,
            expected_exit=1,
        )
        click.echo("the gate refuses the way back; rollback (never gated) takes it below")
    answer = _predict(client, f"Predict with version {versions.other}", patients)
    show_predictions(answer)
    show_alias(run, name, versions.other)
    _answered_by(answer, versions.other, "after activation")
    rolled = expect(
        client.call(
            "Roll back (POST /models/rollback)",
            "POST",
            "/models/rollback",
            admin=True,
            json_body={"name": name},
        )
    )
    click.echo(f"rolled back: active version {rolled['active_version']}")
    show_alias(run, name, versions.best)
    _answered_by(
        _predict(client, "Predict after the rollback", patients[:1]),
        versions.best,
        "after rollback",
    )
    click.echo(f"after rollback /predict answers with version {versions.best} again")


def batch_predict(run: DemoRun, study: StudyResult, client: ApiClient) -> None:
    """The held-out patients, unlabelled, through /batch-predict: a summary, then the CSV."""
    output_dir = run.settings.api.output_dir
    run.batch_input = write_batch_input(study, output_dir / "demo")
    summary = expect(
        client.call(
            "Batch prediction (POST /batch-predict?format=json)",
            "POST",
            "/batch-predict?format=json",
            csv_file=str(run.batch_input),
        )
    )
    run.batch_output = output_dir / summary["saved_path"]
    if summary["rows"] != len(study.split.x_test) or not run.batch_output.is_file():
        raise DemoFailure(f"batch summary does not match the input: {summary}")
    click.echo(
        f"{summary['rows']} rows -> {run.batch_output} "
        f"(counts {summary['counts']}, version {summary['model'].get('version')})"
    )
    csv_answer = client.call(
        "Batch prediction as a CSV attachment",
        "POST",
        "/batch-predict",
        csv_file=str(run.batch_input),
    )
    expect(csv_answer)
    click.echo("\n".join(csv_answer.body.splitlines()[:4]))


def record_history(
    run: DemoRun, client: ApiClient, env: dict[str, str], versions: Published
) -> None:
    """Both versions' metadata and the activation log, for the report."""
    name = run.settings.api.model_name
    run.versions = [
        expect(client.call(f"Metadata of version {v}", "GET", f"/models/{name}/versions/{v}"))
        for v in (versions.best, versions.other)
    ]
    bridge(run, "history", name, env=env)
    run.history = expect(
        client.call("Activation history", "GET", f"/models/{name}/history", record=False)
    )["events"]


def watch_drift(
    run: DemoRun, study: StudyResult, client: ApiClient, env: dict[str, str], report_dir: Path
) -> None:
    """Normal traffic raises no alarm; a batch with one feature shifted is flagged, alone."""
    name = run.settings.api.model_name
    normal, shifted = demo_monitoring.traffic(study.dataset.features, run.settings.training.seed)
    directory = run.settings.api.output_dir / "demo"
    for title, table, path in (
        ("Normal traffic", normal, directory / "normal_traffic.csv"),
        (
            f"Shifted batch ({demo_monitoring.SHIFTED_FEATURE} + {demo_monitoring.SHIFT:g})",
            shifted,
            directory / "shifted_batch.csv",
        ),
    ):
        before = _captured(client, name)
        demo_monitoring.write_csv(table, path)  # kept beside the outputs, for the record
        # Through /predict, so outputs/predicciones.csv stays the held-out patients' result.
        answer = expect(
            client.call(
                f"{title}: {len(table)} patients (POST /predict)",
                "POST",
                "/predict",
                json_body={"records": table.round(4).to_dict(orient="records")},
                record=False,
            )
        )
        counts = pd.Series([p["label"] for p in answer["predictions"]]).value_counts()
        click.echo(f"{title}: {len(table)} patients ({path}) -> {counts.to_dict()}")
        _wait_captured(client, name, before + len(table))
        if table is normal:
            bridge(run, "monitor", name, "--since", "1h", env=env)  # exit 0: no drift
    plots = report_dir / "monitoring"
    bridge(run, "monitor", name, "--since", "1h", "--plots", str(plots), env=env, expected_exit=3)
    report = expect(
        client.call(
            "Drift report (GET /models/<name>/monitoring)",
            "GET",
            f"/models/{name}/monitoring?since=1h",
        )
    )
    if report["status"] == "no_baseline":
        raise DemoFailure(report["message"])
    if report["drifted_features"] != [demo_monitoring.SHIFTED_FEATURE]:
        raise DemoFailure(
            f"expected only {demo_monitoring.SHIFTED_FEATURE} to drift, "
            f"the report flags {report['drifted_features']}"
        )
    run.monitoring = report
    run.monitoring_plots = sorted(plots.glob("*.png"))
    page = client.call("Console page (GET /)", "GET", "/", record=False)
    if page.status != 200 or "drift" not in page.body:
        raise DemoFailure(f"the console at {run.console_url} answered {page.status}")
    click.echo(f"console (drift shown with its plots): {run.console_url}")


def _captured(client: ApiClient, name: str) -> int:
    answer = client.call("captured", "GET", f"/models/{name}/monitoring?since=1h", record=False)
    return int(expect(answer)["sample_size"])


def _wait_captured(client: ApiClient, name: str, expected: int, timeout: float = 30) -> None:
    """Capture writes off the request path: wait until the records are in the database."""
    deadline = time.monotonic() + timeout
    while _captured(client, name) < expected:
        if time.monotonic() > deadline:
            raise DemoFailure(f"fewer than {expected} captured records after {timeout:.0f}s")
        time.sleep(0.3)


def show_predictions(answer: dict[str, Any]) -> None:
    model = answer["model"]
    for number, prediction in enumerate(answer["predictions"], start=1):
        click.echo(
            f"   patient {number}: {prediction['label']:<18} "
            f"p={prediction['probability']:.3f}  "
            f"(version {model['version']}, run {model['run_id'][:8]})"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--trials",
    type=int,
    default=None,
    envvar="DEMO_TRIALS",
    show_default=True,
    help="Optuna trials of the demo study [default: 20, env DEMO_TRIALS].",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml).",
)
@click.option(
    "--variant",
    type=click.Choice(sorted(demo_lab.VARIANT_SETTINGS)),
    default="3C",
    show_default=True,
    help="3C: Hernia / Spondylolisthesis / Normal. 2C: Abnormal / Normal on the 2-class "
    "file, the lab's 80/10/10 split, a decision threshold per model, and the lab's own "
    "model against ours.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/demo"),
    show_default=True,
    help="Where the evidence report (index.html) is written.",
)
def main(trials: int | None, config: str | None, variant: str, report_dir: Path) -> None:
    """Run the whole flow end to end and write reports/demo/index.html."""
    started = time.perf_counter()
    try:
        settings = load_settings(
            config,
            overrides={**demo_lab.VARIANT_SETTINGS[variant], "training.trials": trials or 20},
        )
        run = run_demo(settings, settings.training.trials, report_dir)
        total = time.perf_counter() - started
        report = write_report(run, report_dir, total)
    except (DemoFailure, RegistryError, SettingsError, DataError) as exc:
        click.secho(f"\ndemo failed: {exc}", fg="red", err=True)
        sys.exit(1)
    click.secho("\nDemo finished.", bold=True)
    for title, seconds in run.timings:
        click.echo(f"  {seconds:6.1f}s  {title}")
    click.echo(f"  {total:6.1f}s  total")
    click.echo(
        f"Report: {report}\nBatch results: {run.batch_output}\n"
        # The demo's API is stopped by now: name the one `make serve` starts, not its URL.
        f"MLflow UI: make mlflow-ui   API: make serve, then the console at "
        f"http://{run.settings.api.host}:{run.settings.api.port}/"
    )


if __name__ == "__main__":
    main()
