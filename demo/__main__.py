"""``make demo`` / ``python -m demo``: train, publish, activate, serve and predict, for real.

Steps (each timed): check the data; reach the registry database (embedded or
MONGODB_URI); run a demo-sized Optuna study tracked in MLflow; publish the two best
candidate runs with the ``bridge`` CLI and activate the best; start the API under
granian; over HTTP list /models, predict sample patients; ask the promotion gate to
activate the other version (refused, then forced with a reason) and show the answers
change version, roll back; the runner-up in shadow on the held-out patients (``bridge
compare``); their true diagnoses sent as feedback (live accuracy beside the test
accuracy); a deliberately broken canary ended by its guardrail, then a healthy one
promoted and rolled back; the held-out patients (without labels) to /batch-predict,
which writes ``outputs/predicciones.csv``; drift; and the signed webhook events a local
receiver got for every change (registered before the promotion steps). Then it stops
what it started, writes ``reports/demo/index.html`` and exits 0 — or exits 1 at the
first failure, naming it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
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
from demo.broken_model import broken_artifact
from demo.http import ApiClient, Exchange
from demo.report import write_report
from demo.run import DemoRun
from demo.webhook_receiver import WebhookReceiver
from pipelines.data import DataError
from pipelines.results import StudyResult
from pipelines.study import run_study
from pipelines.train import ProgressPrinter, candidate_printer, format_report
from registry_bridge import cli as bridge_cli
from registry_bridge import database, webhooks
from registry_bridge.canary import routes_to_canary
from registry_bridge.entities import ModelVersionDraft
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring.shadow_log import compare_report
from registry_bridge.store import ModelStore

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
    returncode, stdout, stderr = run_bridge(args, env)
    output = (stdout + stderr).rstrip()
    accepted = expected_exit if isinstance(expected_exit, tuple) else (expected_exit,)
    shown = output
    if returncode != 0 and returncode in accepted:
        # A refusal the demo shows on purpose: said so, and indented, so that an `error:`
        # line at the start of a line still means something went wrong.
        shown = f"(exit {returncode}, as this step expects)\n" + "\n".join(
            f"  {line}" for line in output.splitlines()
        )
    if "--json" in args:  # hundreds of lines: the report keeps them, the terminal says where
        click.echo(f"({len(output.splitlines())} lines of JSON, in the report)")
    else:
        click.echo(shown)
    run.cli_outputs.append((" ".join(command), output))
    if returncode not in accepted:
        raise DemoFailure(
            f"`{' '.join(command)}` failed: {output.splitlines()[-1] if output else ''}"
        )
    return stdout if returncode == 0 else output


def run_bridge(args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """``bridge ARGS`` with ``env``, in this process: (exit status, stdout, stderr).

    The same command line and entry point as in a shell, without a new Python paying
    again for what this one has loaded: in a process of its own each command took 1.2-3.8 s,
    most of it MLflow's import (1.6 s) and its store's first client (0.9-1.3 s) for the
    mirror, 18 commands per demo.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, root = dict(os.environ), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # The command's logging.basicConfig then writes to its own stderr, as in a shell, and
    # the handler it adds goes with it.
    root.handlers.clear()
    os.environ.clear()
    os.environ.update(env)
    code = 0
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            bridge_cli.main.main(list(args), prog_name="bridge")  # ends in SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = handlers
        root.setLevel(level)
    return code, stdout.getvalue(), stderr.getvalue()


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
    store: ModelStore | None = None
    receiver: WebhookReceiver | None = None

    def stop(self, settings: Settings) -> None:
        """Stop the API, the webhook receiver and the embedded database if the demo
        started them."""
        if self.api is not None:
            self.api.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.store is not None:
            self.store.close()
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
        "CAPTURE_SAMPLE_PERCENT": "100",  # every request kept: feedback and drift use them
        "MODEL_NAME": settings.api.model_name,  # the API and bridge work on the run's model
        # The webhook's secret: `bridge webhooks add --secret-env` stores only its name, the
        # API's senders read it to sign each POST, the demo's receiver checks with it.
        WEBHOOK_SECRET_ENV: secrets.token_urlsafe(24),
    }
    gate_rule = write_demo_config(settings, env, report_dir)
    started = Started()
    try:
        with step(run, 1, "Registry database"):
            started.embedded_db = reach_registry(settings)
        with step(run, 2, f"Train: Optuna study, {trials} trials, tracked in MLflow"):
            study = train(run, trials)
        store = started.store = ModelStore.from_settings(settings)
        with step(run, 3, "Publish the two best runs to MongoDB GridFS; activate the best"):
            versions = publish_two_best(run, study, env, store)
        with step(run, 4, "Start the API under granian"):
            started.api, client = serve(run, env, token, report_dir)
            started.client = client
        patients = sample_patients(study)
        with step(run, 5, "List models and predict sample patients"):
            predict_samples(run, client, patients, versions.best)
        with step(run, 6, "Webhooks: a local receiver that checks the signature"):
            started.receiver = register_webhook(run, env, store)
            changes_before = len(store.list_activation_log(settings.api.model_name))
        with step(
            run, 7, f"Activate version {versions.other} through the promotion gate, roll back"
        ):
            activate_and_roll_back(run, client, patients, versions, env, gate_rule)
        held_out = held_out_patients(study)
        with step(run, 8, f"Shadow traffic: version {versions.other} scores a copy, compare"):
            request_id = shadow_compare(run, client, env, store, versions, held_out)
        with step(run, 9, "Feedback: the held-out patients' diagnoses, live accuracy"):
            send_feedback(run, client, env, store, request_id, held_out, versions.best)
        with step(run, 10, "Canaries: a broken one ended by its guardrail, a healthy one promoted"):
            canaries(run, client, env, store, versions, held_out)
        with step(run, 11, "Batch prediction of the held-out patients (POST /batch-predict)"):
            batch_predict(run, study, client)
        with step(run, 12, "Versions and activation history from the registry"):
            record_history(run, client, env, versions)
        with step(run, 13, f"Monitoring: a batch with {demo_monitoring.SHIFTED_FEATURE} shifted"):
            watch_drift(run, study, client, env, report_dir)
        with step(run, 14, "Webhook events the receiver got, signed"):
            show_webhook_events(run, env, store, started.receiver, changes_before)
        if settings.data.variant == "2C":
            with step(run, 15, "The lab's model against ours, on the same test rows"):
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


def publish_two_best(
    run: DemoRun, study: StudyResult, env: dict[str, str], store: ModelStore
) -> Published:
    """Publish the two best candidates with the ``bridge`` CLI and activate the best.

    Run again on the same registry, the demo finds the best of its earlier run in
    production, as good as this run's (same data, same seed), and its own gate rule would
    refuse the switch ("needs +0.05"): this run's best then replaces it with ``--force``
    and a reason saying so, as an operator would (step 7 shows the gate at work)."""
    name = run.settings.api.model_name
    best, second = study.candidates[:2]
    active = store.get_active_version(name)
    reason = "demo: best cross-validated run"
    force: tuple[str, ...] = ()
    if active is not None:
        force = ("--force",)
        reason = f"demo run again: this run's best replaces v{active.active_version}"
    bridge(
        run,
        *("publish", name, "--run-id", best.run_id, "--activate", *force),
        *("--reason", reason),
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
# The canary's guardrail judges from 5 canary answers in a worker's window (default 20):
# the broken canary is ended after a handful of requests.
DEMO_CANARY = {"min_requests": 5}
# The demo's receiver listens on 127.0.0.1, a target refused unless this is set.
DEMO_WEBHOOKS = {"allow_private": True}
WEBHOOK_SECRET_ENV = "DEMO_WEBHOOK_SECRET"
WEBHOOK_EVENTS = "activate,rollback,canary,shadow"
BROKEN_FEATURE = "degree_spondylolisthesis"  # the broken candidate fails above 1000
BROKEN_ABOVE = 1000.0
WAIT_S = 30  # the longest any condition is waited for


def write_demo_config(settings: Settings, env: dict[str, str], report_dir: Path) -> str | None:
    """Give the demo's API and ``bridge`` the config file in use plus the DEMO_RULE (unless
    rules are configured), DEMO_CANARY and DEMO_WEBHOOKS, written beside the report.
    The rule added, as shown, or None."""
    import yaml

    tree: dict[str, Any] = {}
    if settings.config_file.resolve() != DEFAULT_CONFIG.resolve():
        tree = yaml.safe_load(settings.config_file.read_text(encoding="utf-8")) or {}
    rule = None
    if not settings.promotion.rules:
        tree["promotion"] = {**(tree.get("promotion") or {}), "rules": DEMO_RULE}
        rule = "f1_macro: {min_absolute_change: 0.05}"
    tree["canary"] = {**(tree.get("canary") or {}), **DEMO_CANARY}
    tree["webhooks"] = {**(tree.get("webhooks") or {}), **DEMO_WEBHOOKS}
    report_dir.mkdir(parents=True, exist_ok=True)
    config = report_dir / "demo-config.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    env["VERTEBRAL_CONFIG"] = str(config.resolve())
    return rule


def wait_until(condition: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``condition`` until it returns something true (returned); DemoFailure naming
    ``what`` after ``timeout`` seconds."""
    found = poll_until(condition, timeout)
    if not found:
        raise DemoFailure(f"{what}: not seen within {timeout:.0f}s")
    return found


def poll_until(condition: Any, timeout: float) -> Any:
    """Poll ``condition`` every 0.2 s for up to ``timeout`` seconds; its first true value,
    or its last (false) one."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


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
        run.gate_refusal = said.splitlines()
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


def register_webhook(run: DemoRun, env: dict[str, str], store: ModelStore) -> WebhookReceiver:
    """A receiver on 127.0.0.1 (docs/webhooks.md's, in a thread) subscribed to the changes
    the next steps make, signed with the secret in DEMO_WEBHOOK_SECRET."""
    receiver = WebhookReceiver(env[WEBHOOK_SECRET_ENV].encode()).start()
    click.echo(f"receiver at {receiver.url}, checking X-Registry-Signature (docs/webhooks.md)")
    if any(hook.get("name") == "demo" for hook in webhooks.list_webhooks(store.db)):
        webhooks.remove_webhook(store.db, "demo")  # an earlier demo's, its receiver gone
        click.echo("removed the webhook 'demo' an earlier demo added")
    bridge(
        run,
        *("webhooks", "add", receiver.url, "--events", WEBHOOK_EVENTS),
        *("--name", "demo", "--secret-env", WEBHOOK_SECRET_ENV),
        env=env,
    )
    return receiver


@dataclass(frozen=True)
class HeldOut:
    """The study's test split: records as /predict takes them, and their true diagnoses."""

    records: list[dict[str, float]]
    labels: list[str]


def held_out_patients(study: StudyResult) -> HeldOut:
    x_test, y_test = study.split.x_test, study.split.y_test
    return HeldOut(x_test.round(4).to_dict(orient="records"), [str(y) for y in y_test])


def shadow_compare(
    run: DemoRun,
    client: ApiClient,
    env: dict[str, str],
    store: ModelStore,
    versions: Published,
    held_out: HeldOut,
) -> str:
    """The runner-up scores a copy of every request after its answer; ``bridge compare``
    says how often it agrees with the best. The request's id, for the feedback step."""
    name = run.settings.api.model_name
    count = len(held_out.records)
    compared_before = compare_report(store, run.settings, name, "1h")["compared"]
    captured_before = _captured(client, name)
    bridge(
        run,
        *("shadow", name, str(versions.other), "--percent", "100"),
        *("--reason", "demo: would the runner-up agree?"),
        env=env,
    )
    answer = _predict(client, f"The {count} held-out patients (POST /predict)", held_out.records)
    _answered_by(answer, versions.best, "with the shadow on")
    click.echo(
        f"{count} held-out patients answered by version {versions.best} "
        f"(request {answer['request_id']}); version {versions.other} scores a copy after it"
    )
    report = wait_until(
        lambda: (
            found
            if (found := compare_report(store, run.settings, name, "1h"))["compared"]
            >= compared_before + count
            else None
        ),
        f"{count} shadow comparisons of version {versions.other}",
    )
    bridge(run, "compare", name, "--since", "1h", env=env)
    run.shadow = report
    bridge(run, "shadow", name, "--off", "--reason", "demo: compared", env=env)
    _wait_captured(client, name, captured_before + count)  # the feedback step labels them
    return str(answer["request_id"])


def send_feedback(
    run: DemoRun,
    client: ApiClient,
    env: dict[str, str],
    store: ModelStore,
    request_id: str,
    held_out: HeldOut,
    best: int,
) -> None:
    """The held-out patients' true diagnoses, joined to the request that predicted them;
    ``bridge monitor`` then gives the active version's live accuracy beside its test one."""
    name = run.settings.api.model_name
    labels = [
        {"request_id": request_id, "label": label, "record": index}
        for index, label in enumerate(held_out.labels)
    ]
    stored = client.call(
        f"Feedback: {len(labels)} true diagnoses (POST /feedback)",
        "POST",
        f"/feedback?name={name}",
        admin=True,
        json_body={"labels": labels},
    )
    if stored.status not in (200, 201):
        expect(stored)
    click.echo(f"stored {stored.json()['stored']} label(s): {stored.json()['versions']}")
    # Exit 3 flags drift or a quality drop: 62 records of one split are few for the drift
    # tests (it may flag them); the quality of the answers is what this step reads.
    said = bridge(run, "monitor", name, "--since", "1h", "--json", env=env, expected_exit=(0, 3))
    report = json.loads(said[said.index("{") : said.rindex("}") + 1])
    if report.get("quality_drop"):
        raise DemoFailure("bridge monitor flags a quality drop on the held-out patients")
    run.quality = report.get("quality") or []
    quality = next((q for q in run.quality if q["version"] == best), None)
    if quality is None or quality.get("accuracy") is None:
        raise DemoFailure(f"bridge monitor gives no live accuracy of version {best}")
    test = (quality.get("test_metrics") or {}).get("accuracy")
    click.echo(
        f"live quality of version {best}: {quality['labelled']} labelled, "
        f"live accuracy {quality['accuracy']:.3f} (test accuracy "
        f"{'?' if test is None else f'{test:.3f}'}), macro F1 {quality['f1_macro']:.3f}, "
        f"{quality['status']}"
    )
    # The shadow comparison joins the same labels: both versions' live accuracy.
    run.shadow = compare_report(store, run.settings, name, "1h")
    for pair in run.shadow["pairs"]:
        live = pair["live_accuracy"]
        if live["labelled"]:
            click.echo(
                f"on the {live['labelled']} shadowed records: live accuracy of version "
                f"{pair['active_version']} {live['active']:.3f}, of version "
                f"{pair['shadow_version']} (shadow) {live['shadow']:.3f}"
            )


def _publish_broken(run: DemoRun, store: ModelStore, other: int) -> int:
    """The runner-up's graph made to fail on BROKEN_FEATURE above BROKEN_ABOVE, published
    with the store as a new version, its document the runner-up's (source says why)."""
    name = run.settings.api.model_name
    runner_up = store.get_model_version(name, other)
    columns = [column["name"] for column in runner_up.input_schema]
    artifact = broken_artifact(
        store.read_artifact(runner_up),
        feature=columns.index(BROKEN_FEATURE),
        above=BROKEN_ABOVE,
        output=runner_up.onnx_io.get("probabilities_output", "probabilities"),
    )
    draft = ModelVersionDraft.from_document(
        {
            **runner_up.to_dict(),
            "source": f"demo: v{other} made to fail on {BROKEN_FEATURE} > {BROKEN_ABOVE:g}",
        }
    )
    published = store.publish_model_version(draft, artifact, new_version=True)
    broken = published.version.version
    click.echo(
        f"published version {broken}: version {other}'s graph, failing (onnxruntime raises) "
        f"on {BROKEN_FEATURE} > {BROKEN_ABOVE:g}"
    )
    return broken


def _keyed_predict(
    client: ApiClient, title: str, record: dict[str, float], key: str, keep: bool = False
) -> Exchange:
    return client.call(
        title,
        "POST",
        "/predict",
        json_body={"records": [record]},
        headers={"X-Request-Key": key},
        record=keep,
    )


def canaries(
    run: DemoRun,
    client: ApiClient,
    env: dict[str, str],
    store: ModelStore,
    versions: Published,
    held_out: HeldOut,
) -> None:
    """A broken candidate as a 50 % canary answers 5xx on some records: its guardrail ends
    it and the best answers everything again. Then the runner-up as a healthy 20 % canary,
    promoted (forced past the gate when it refuses), and a rollback to the best."""
    name = run.settings.api.model_name
    broken = _publish_broken(run, store, versions.other)
    bridge(
        run,
        *("canary", name, str(broken), "--percent", "50"),
        *("--reason", "demo: a candidate that fails on some inputs"),
        env=env,
    )
    keys = [f"patient-{i}" for i in range(400)]
    to_canary = [k for k in keys if routes_to_canary(k.encode(), 50)]
    failing = {**held_out.records[0], BROKEN_FEATURE: 2000.0}
    failures = sent = 0

    def ended() -> bool:
        state = store.get_active_version(name)
        return state is not None and state.canary is None

    # Rounds of requests whose X-Request-Key routes them to the canary, until a worker's
    # heartbeat (every 2 s) sees its window breach the guardrail and ends the canary.
    deadline = time.monotonic() + WAIT_S
    while not ended():
        if time.monotonic() > deadline:
            raise DemoFailure(f"the guardrail did not end the canary of version {broken}")
        for key in to_canary[sent % len(to_canary) :][:12]:
            answer = _keyed_predict(
                client,
                f"A record the canary fails on (X-Request-Key: {key})",
                failing,
                key,
                keep=sent == 0,
            )
            sent += 1
            failures += answer.status >= 500
        poll_until(ended, 2.5)
    click.echo(
        f"sent {sent} requests routed to the canary with {BROKEN_FEATURE}=2000: "
        f"{failures} answered 5xx by version {broken}"
    )
    entry = next(e for e in reversed(store.list_activation_log(name)) if e.action == "canary-abort")
    run.canary_abort = entry.to_dict()
    click.echo(f"audit entry: {entry.action} by {entry.by}: {entry.reason}")
    for side in ("canary", "active"):
        click.echo(f"   {side}: {guardrail_figures((entry.details or {}).get(side))}")
    back = wait_until(
        lambda: (
            a
            if (a := _keyed_predict(client, "After the abort", failing, to_canary[0])).status == 200
            else None
        ),
        "a 200 answer to a canary key after the abort",
    )
    _answered_by(back.json(), versions.best, "after the canary's abort")
    click.echo(f"after the abort the same keys are answered by version {versions.best} (HTTP 200)")

    bridge(
        run,
        *("canary", name, str(versions.other), "--percent", "20"),
        *("--reason", "demo: the runner-up, healthy"),
        env=env,
    )
    to_healthy = [k for k in keys if routes_to_canary(k.encode(), 20)][:3]
    to_best = [k for k in keys if not routes_to_canary(k.encode(), 20)][:5]
    answered = []
    for number, key in enumerate(to_healthy + to_best):  # fewer than min_requests a worker
        exchange = _keyed_predict(
            client, f"Canary at 20 % (X-Request-Key: {key})", held_out.records[number], key
        )
        answered.append(expect(exchange)["model"]["version"])
    click.echo(
        f"{len(answered)} requests: version {versions.other} answered "
        f"{answered.count(versions.other)}, version {versions.best} "
        f"{answered.count(versions.best)} (sticky by X-Request-Key)"
    )
    if run.gate_refusal:  # step 7's gate refused this version: forced, with the reason
        bridge(
            run,
            *("canary", name, "--promote", "--force"),
            *("--reason", "demo: healthy canary; the gate refused it in step 7"),
            env=env,
        )
    else:
        bridge(run, "canary", name, "--promote", "--reason", "demo: healthy canary", env=env)
    run.canary_promote = next(
        e for e in reversed(store.list_activation_log(name)) if e.action == "canary-promote"
    ).to_dict()
    show_alias(run, name, versions.other)
    rolled = expect(
        client.call(
            "Roll back after the canary's promotion (POST /models/rollback)",
            "POST",
            "/models/rollback",
            admin=True,
            json_body={"name": name, "reason": "demo: back to the best for the next steps"},
        )
    )
    click.echo(f"rolled back: active version {rolled['active_version']}")
    show_alias(run, name, versions.best)
    _answered_by(
        _predict(client, "Predict after the canary's rollback", held_out.records[:1]),
        versions.best,
        "after the canary's rollback",
    )
    click.echo(f"rolled back: version {versions.best} answers again")


def guardrail_figures(figures: dict[str, Any] | None) -> str:
    """One version's figures in a canary-abort entry: requests, failures, p99."""
    figures = figures or {}
    p99 = figures.get("p99_ms")
    return (
        f"version {figures.get('version')}, {figures.get('requests')} request(s) in the window, "
        f"{figures.get('errors')} failed, p99 {'-' if p99 is None else f'{p99:.1f} ms'}"
    )


def show_webhook_events(
    run: DemoRun,
    env: dict[str, str],
    store: ModelStore,
    receiver: WebhookReceiver | None,
    changes_before: int,
) -> None:
    """Every change since the webhook was added (one audit entry each, all subscribed
    events) reached the receiver, signed: wait for them, list them, and the deliveries."""
    assert receiver is not None
    name = run.settings.api.model_name
    expected = len(store.list_activation_log(name)) - changes_before
    # Past the senders' retries at 2, 6, 14 and 30 s (webhooks.backoff_s 2): a clean-clone
    # CI run, with the bench beside it, got an event at its fifth attempt, after 30 s.
    wait_s = 70
    if not receiver.wait_for(lambda got: sum(r.verified for r in got) >= expected, wait_s):
        raise DemoFailure(
            f"the receiver got {sum(r.verified for r in receiver.got)} signed event(s) of "
            f"the {expected} changes within {wait_s}s"
        )
    for received in receiver.got:
        event = received.event
        details = event.get("details") or {}
        action = f" ({details['action']})" if details.get("action") else ""
        click.echo(
            f"   {event.get('event')}{action}: v{event.get('from_version')} -> "
            f"v{event.get('to_version')} by {event.get('actor')}, "
            f"signature verified: {'yes' if received.verified else 'NO'}"
        )
    run.webhook_events = [
        {**r.event, "verified": r.verified, "delivery": r.delivery} for r in receiver.got
    ]
    kinds = {str(r.event.get("event")) for r in receiver.got if r.verified}
    if not {"activate", "rollback"} <= kinds:
        raise DemoFailure(f"no signed activate and rollback events received: {sorted(kinds)}")
    bridge(run, "webhooks", "deliveries", "--webhook", "demo", "--limit", "30", env=env)
    # Its receiver stops with the demo: later changes (make serve, bridge activate) would
    # be retried against a closed port for ~17 minutes. The deliveries above are kept.
    webhooks.remove_webhook(store.db, "demo")
    click.echo("removed the webhook 'demo' (its receiver stops with the demo)")


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
