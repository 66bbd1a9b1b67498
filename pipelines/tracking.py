"""Point MLflow at the configured tracking store and experiment.

The tracking URI comes from the settings (not only from ``MLFLOW_TRACKING_URI``), and
experiments are created with an absolute artifact location under
``settings.mlflow.artifact_root`` so artifacts never land wherever the shell happens
to be.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from conf.settings import MlflowSettings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# The experiment tag MLflow 3's UI reads to open an experiment on its model-training view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_for(settings: MlflowSettings, variant: str) -> str:
    """The experiment a study on ``variant`` logs into.

    ``bridge runs`` and ``bridge publish --best`` rank one experiment: with 2-class runs
    beside the 3-class ones, the best run could be a model the 3-class name cannot hold.
    So a 2-class study on the default experiment logs into ``<default>-2c``; an
    experiment chosen by the user (``--experiment``, a config file) is kept.
    """
    if variant == "2C" and settings.experiment == MlflowSettings.experiment:
        return f"{settings.experiment}-2c"
    return settings.experiment


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def is_remote(tracking_uri: str) -> bool:
    """True for a tracking server (http, https, databricks), False for local stores."""
    return tracking_uri.split(":", 1)[0] in ("http", "https", "databricks")


def artifact_location(settings: MlflowSettings, experiment: str) -> str:
    """The absolute file URI where a new experiment keeps its artifacts."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-") or "experiment"
    return (settings.artifact_root / slug).resolve().as_uri()


def use_tracking_store(settings: MlflowSettings) -> MlflowClient:
    """Set MLflow's tracking URI from the settings and return a client on it."""
    import mlflow  # imported here: sqlite_path serves light modules (the registry mirror)
    from mlflow.tracking import MlflowClient

    database = sqlite_path(settings.tracking_uri)
    if database is not None:
        # SQLite creates the file but not its directory.
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri)


def ensure_experiment(settings: MlflowSettings, name: str | None = None) -> str:
    """Create (or reuse) the experiment, make it the active one, return its id."""
    import mlflow

    client = use_tracking_store(settings)
    name = name or settings.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # A tracking server (http://...) decides where artifacts go (--serve-artifacts);
        # a local store keeps them under mlflow.artifact_root, not in the cwd.
        location = None if is_remote(settings.tracking_uri) else artifact_location(settings, name)
        experiment_id = client.create_experiment(name, artifact_location=location)
        log.info("created MLflow experiment %r (artifacts in %s)", name, location)
    elif experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
        experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # MLflow 3 opens an experiment without this tag on its GenAI overview (traces, tokens).
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
