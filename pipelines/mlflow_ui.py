"""``python -m pipelines.mlflow_ui`` (``make mlflow-ui``): the MLflow UI over the tracking store.

Runs ``mlflow server`` on the configured tracking URI with the configured artifact
root, bound to loopback on port 5000 unless told otherwise. Relative SQLite paths are
made absolute so the UI shows the same store whatever directory it is started from.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from conf.settings import MlflowSettings, SettingsError, load_settings
from conf.uris import mask_uri
from pipelines.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_for, sqlite_path

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The search that keeps a study's candidate runs (the best trial of each family).
CANDIDATES = "tags.candidate = 'true'"
# MLflow 3's server also starts a job runner (seven huey consumer processes) for GenAI
# scorers and periodic trace tasks, which this project never submits: without it the UI
# answers in ~7 s instead of ~22 s, on ~6 s of CPU instead of ~20 (2 cores, measured).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def absolute_tracking_uri(tracking_uri: str) -> str:
    """The tracking URI with a relative SQLite path made absolute."""
    database = sqlite_path(tracking_uri)
    return f"sqlite:///{database.resolve()}" if database is not None else tracking_uri


def server_command(
    settings: MlflowSettings, host: str = "127.0.0.1", port: int = 5000, workers: int = 1
) -> list[str]:
    """The ``mlflow server`` command line serving the tracking store and its artifacts."""
    artifacts = Path(settings.artifact_root).resolve().as_uri()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        absolute_tracking_uri(settings.tracking_uri),
        # New experiments (created through the UI) keep artifacts beside the study's.
        "--default-artifact-root",
        artifacts,
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        # One worker: the UI is for one person, and the machine has two cores.
        "--workers",
        str(workers),
    ]


def direct_links(settings: MlflowSettings, base_url: str) -> list[str]:
    """Lines naming the UI pages of the study's runs and of each registered model.

    Also tags the study's experiment as model development when it is not yet (experiments
    created before the tag existed open on MLflow 3's GenAI overview otherwise).
    """
    from urllib.parse import quote

    from pipelines.tracking import use_tracking_store

    client = use_tracking_store(settings)
    lines = []
    # The 3-class study's experiment, then the 2-class one's (experiment_for).
    for name in dict.fromkeys(experiment_for(settings, v) for v in ("3C", "2C")):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            continue
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        runs = f"{base_url}/#/experiments/{experiment.experiment_id}/runs"
        lines.append(f"  runs of {name!r}: {runs}")
        lines.append(f"    its candidates only: {runs}?searchFilter={quote(CANDIDATES)}")
    for model in client.search_registered_models():
        alias = (model.aliases or {}).get(settings.alias)
        serving = f" (@{settings.alias} = version {alias})" if alias is not None else ""
        lines.append(
            f"  model {model.name!r}{serving}: {base_url}/#/models/{quote(model.name, safe='')}"
        )
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind (loopback keeps the UI private to this machine).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to bind."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Server processes (one is enough for one person).",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml).",
)
def main(host: str, port: int, workers: int, config: str | None) -> None:
    """Serve the MLflow UI and REST API over the project's tracking store."""
    try:
        settings = load_settings(config).mlflow
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if settings.tracking_uri.startswith(("http://", "https://")):
        # Already a tracking server (e.g. docker compose): it serves the UI itself.
        click.echo(
            f"the tracking store is an MLflow server: open {mask_uri(settings.tracking_uri)}"
        )
        return
    database = sqlite_path(settings.tracking_uri)
    if database is not None:
        database.resolve().parent.mkdir(parents=True, exist_ok=True)
    Path(settings.artifact_root).mkdir(parents=True, exist_ok=True)
    if host not in LOOPBACK:
        click.echo(f"warning: binding {host}: the MLflow UI has no authentication", err=True)
    command = server_command(settings, host, port, workers)
    store = mask_uri(absolute_tracking_uri(settings.tracking_uri))
    click.echo(
        f"MLflow UI on http://{host}:{port}  (store {store}, artifacts "
        f"{Path(settings.artifact_root).resolve()}); Ctrl-C stops it"
    )
    if database is None or database.exists():  # links need the store; a new one has none
        for line in direct_links(settings, f"http://{host}:{port}"):
            click.echo(line)
    sys.stdout.flush()
    for name, value in SERVER_ENV.items():
        os.environ.setdefault(name, value)
    # Replace this process so Ctrl-C and signals reach the server directly.
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
