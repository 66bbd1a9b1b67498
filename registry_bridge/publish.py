"""The MLflow side of the bridge: list candidate runs, publish one into the model store.

A candidate run (docs/run-contract.md) carries the tag ``onnx_model_uri`` and the
artifact ``registry/model_card.json``. Publishing downloads both, re-runs the ONNX
bytes in onnxruntime on the card's evaluation data (parity with the recorded sklearn
predictions), hands bytes and metadata to :class:`ModelStore`, then writes the
registry version and file id back onto the run as tags.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from conf.contract import cv_mean_key
from conf.settings import Settings
from pipelines.metrics import evaluation_metrics
from registry_bridge import onnx_check
from registry_bridge import runs as mlflow_runs
from registry_bridge.entities import (
    CandidateRun,
    ModelVersion,
    ModelVersionDraft,
    PublishResult,
    current_user,
)
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring import baselines
from registry_bridge.reference import ReferenceRows
from registry_bridge.scoring.threshold import decide
from registry_bridge.store import ModelStore

log = logging.getLogger(__name__)

CANDIDATE_FILTER = "tags.candidate = 'true'"
# Tags written back onto a published run.
TAG_NAME, TAG_VERSION, TAG_FILE_ID = "registry_name", "registry_version", "registry_file_id"
# Distribution names whose versions a version document records.
LIBRARIES = {
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "skl2onnx": "skl2onnx",
    "scikit-learn": "scikit-learn",
    "mlflow": "mlflow",
    "numpy": "numpy",
}


def _objective_key(settings: Settings) -> str:
    return cv_mean_key(settings.training.objective)


def list_candidate_runs(
    settings: Settings, store: ModelStore | None = None, experiment: str | None = None
) -> list[CandidateRun]:
    """Candidate runs of the experiment, best first by the study's objective (CV mean).

    Raises:
        RegistryError: NOT_FOUND for an unknown experiment; REGISTRY_UNAVAILABLE when
            MLflow or the registry database fails.
    """
    from mlflow.exceptions import MlflowException

    name = experiment or settings.mlflow.experiment
    client = mlflow_runs.tracking_client(settings)
    try:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise RegistryError(
                "NOT_FOUND",
                f"MLflow experiment {name!r} not found in the "
                f"tracking store {settings.mlflow.tracking_uri}",
            )
        runs = client.search_runs(
            [found.experiment_id], filter_string=CANDIDATE_FILTER, max_results=5000
        )
    except MlflowException as exc:
        raise mlflow_runs.mlflow_error(exc, settings, f"experiment {name!r}") from None
    objective, tie_break = _objective_key(settings), f"test_{settings.training.objective}"

    def rank(run: Any) -> tuple[float, float]:
        metrics = run.data.metrics
        return (-metrics.get(objective, float("-inf")), -metrics.get(tie_break, float("-inf")))

    runs = sorted(runs, key=rank)
    published = store.published_versions_by_run([r.info.run_id for r in runs]) if store else {}
    return [
        CandidateRun(
            run_id=r.info.run_id,
            experiment_id=r.info.experiment_id,
            run_name=r.info.run_name,
            model_family=r.data.tags.get("model_family"),
            start_time=_from_millis(r.info.start_time),
            metrics=dict(r.data.metrics),
            params=dict(r.data.params),
            onnx_model_uri=r.data.tags.get("onnx_model_uri"),
            published_versions=published.get(r.info.run_id, []),
            variant=r.data.tags.get("variant"),
            classes=[c for c in r.data.tags.get("classes", "").split(",") if c],
        )
        for r in runs
    ]


def best_candidate_run_id(settings: Settings, experiment: str | None = None) -> str:
    """The run id of the best candidate (what ``publish --best`` picks).

    Raises:
        RegistryError: NOT_FOUND when the experiment holds no candidate run.
    """
    runs = list_candidate_runs(settings, None, experiment)
    if not runs:
        raise RegistryError(
            "NOT_FOUND",
            f"no candidate run (tag candidate=true) in MLflow "
            f"experiment {experiment or settings.mlflow.experiment!r}; "
            "run `make train` first",
        )
    return runs[0].run_id


def publish_run(
    store: ModelStore,
    settings: Settings,
    run_id: str,
    name: str | None = None,
    new_version: bool = False,
    by: str | None = None,
    threshold: float | None = None,
) -> PublishResult:
    """Publish a candidate MLflow run as the next version of ``name`` (default ``MODEL_NAME``).

    A run already published returns its version (``created=False``) unless ``new_version``.
    ``threshold`` publishes a binary run with another decision threshold than the one
    training chose: a new version (a published version never changes), its labels,
    parity check and threshold-dependent test metrics recomputed at that threshold.

    Raises:
        RegistryError: NOT_FOUND (unknown run), INVALID_INPUT (not a candidate, broken
            model card), CONFLICT (ONNX parity with the recorded predictions fails).
    """
    from mlflow.exceptions import MlflowException

    name = name or settings.api.model_name
    client = mlflow_runs.tracking_client(settings)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise mlflow_runs.mlflow_error(exc, settings, f"MLflow run {run_id!r}") from None
    tags = run.data.tags
    if tags.get("candidate") != "true":
        raise RegistryError(
            "INVALID_INPUT",
            f"MLflow run {run_id} is not a candidate (no tag "
            "candidate=true); `bridge runs` lists the candidates",
        )
    if threshold is not None:
        _check_threshold(threshold)
        same = [
            v
            for v in store.search_model_versions(name)
            if v.run_id == run_id and v.threshold == threshold
        ]
        if same and not new_version:
            return PublishResult(same[-1], created=False)
    if not new_version and threshold is None:  # a threshold publish was looked up above
        existing = store.find_published(name, run_id)
        if existing is not None:
            _tag_run(
                client, settings, run_id, existing.name, existing.version, existing.artifact_file_id
            )
            store.update_mirror(name, "publish")  # idempotent: repairs a version MLflow lacks
            return PublishResult(existing, created=False)
    model_uri = tags.get("onnx_model_uri")
    if not model_uri:
        raise RegistryError("INVALID_INPUT", f"MLflow run {run_id} has no tag onnx_model_uri")
    with tempfile.TemporaryDirectory(prefix="bridge-publish-") as tmp:
        artifact, model_dir = _download_onnx(settings, model_uri, Path(tmp) / "onnx", run_id)
        card = mlflow_runs.read_card(client, settings, run_id, Path(tmp) / "card")
        if threshold is not None:
            card = _with_threshold(card, threshold, run_id)
        libraries = _library_versions(client, artifact, model_dir, tags.get("sklearn_model_uri"))
    what = f"refusing to publish MLflow run {run_id}"
    onnx_check.check_predictions(artifact, card["evaluation"], card["onnx"], card["classes"], what)
    draft = ModelVersionDraft(
        name=name,
        run_id=run_id,
        experiment_id=run.info.experiment_id,
        source=model_uri,
        model_family=tags.get("model_family") or card.get("model_family"),
        params=dict(run.data.params),
        metrics=_version_metrics(run.data.metrics, card, threshold is not None),
        classes=[str(c) for c in card["classes"]],
        input_schema=list(card["input_schema"]),
        data_fingerprint=tags.get("data_fingerprint") or card.get("data_fingerprint"),
        library_versions=libraries,
        onnx_io=dict(card["onnx"]),
        input_example=onnx_check.input_example(card["evaluation"]),
        variant=tags.get("variant") or card.get("variant"),
        **_threshold(card),
        created_by=by or current_user(),
    )
    # A run's versions at other thresholds are other versions: the key tells them apart.
    key = None if threshold is None else f"{run_id}@threshold={threshold!r}"
    result = store.publish_model_version(draft, artifact, new_version=new_version, publish_key=key)
    version = result.version
    try:
        _tag_run(client, settings, run_id, version.name, version.version, version.artifact_file_id)
    except RegistryError:
        if result.created:  # a version whose run does not point back to it is half-published
            store.unpublish_model_version(version.name, version.version)
        raise
    if result.created:  # the training baseline drift is measured against (never fails this)
        baselines.attach_baseline(store, settings, version, card, draft.data_fingerprint)
        _first_reference_set(store, version, card)
    return result


def _first_reference_set(store: ModelStore, version: ModelVersion, card: dict[str, Any]) -> None:
    """A name without a reference set gets its first version's test split (the rows and true
    labels of the model card); never fails the publish, which is done."""
    truth = card["evaluation"].get("true_labels")
    if not truth or store.get_reference_set(version.name) is not None:
        return
    rows = ReferenceRows(
        np.asarray(card["evaluation"]["inputs"], dtype=np.float64), [str(t) for t in truth]
    )
    source = f"test split of {version.label} (MLflow run {version.run_id})"
    try:
        store.set_reference_set(version.name, rows, source, by=version.created_by)
    except (RegistryError, ValueError) as exc:
        log.warning("%s has no reference set (the gate needs one): %s", version.name, exc)


# Test metrics that do not depend on a decision threshold.
_THRESHOLD_FREE = frozenset({"test_auc", "test_roc_auc_ovr", "test_log_loss"})


def _version_metrics(
    logged: dict[str, float], card: dict[str, Any], rethresholded: bool
) -> dict[str, float]:
    """The run's cv_/test_ metrics; at another threshold, its test ones rescored (or dropped)."""
    metrics = {k: float(v) for k, v in logged.items() if k.startswith(("cv_", "test_"))}
    if not rethresholded:
        return metrics
    kept = {k: v for k, v in metrics.items() if not k.startswith("test_") or k in _THRESHOLD_FREE}
    return {**kept, **card.get("rescored_metrics", {})}


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise RegistryError(
            "INVALID_INPUT", f"threshold must be between 0 and 1 (exclusive), got {threshold}"
        )


def _with_threshold(card: dict[str, Any], threshold: float, run_id: str) -> dict[str, Any]:
    """The card as if training had chosen ``threshold``: labels and test metrics at it."""
    positive = card.get("positive_class")
    if card.get("threshold") is None or not positive:
        raise RegistryError(
            "INVALID_INPUT",
            f"MLflow run {run_id} is not a binary model with a decision threshold; "
            "--threshold applies to 2-class runs only",
        )
    evaluation = dict(card["evaluation"])
    probabilities = np.asarray(evaluation["probabilities"], dtype=np.float64)
    labels, _ = decide(probabilities, card["classes"], threshold, positive)
    evaluation.update(labels=[str(label) for label in labels], threshold=threshold)
    rescored: dict[str, float] = {}
    truth = evaluation.get("true_labels")
    if truth:
        rescored = {
            f"test_{k}": v
            for k, v in evaluation_metrics(
                truth, list(labels), probabilities, card["classes"], positive
            ).items()
        }
    return {
        **card,
        "threshold": threshold,
        "threshold_rule": "fixed",
        "evaluation": evaluation,
        "rescored_metrics": rescored,
    }


def _threshold(card: dict[str, Any]) -> dict[str, Any]:
    """A binary card's decision threshold, rule and positive class (nothing for 3C)."""
    if card.get("threshold") is None:
        return {}
    return {
        "threshold": float(card["threshold"]),
        "threshold_rule": card.get("threshold_rule"),
        "positive_class": card.get("positive_class"),
    }


def _tag_run(
    client: Any, settings: Settings, run_id: str, name: str, version: int, file_id: str
) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.set_tag(run_id, TAG_NAME, name)
        client.set_tag(run_id, TAG_VERSION, str(version))
        client.set_tag(run_id, TAG_FILE_ID, file_id)
    except MlflowException as exc:
        raise mlflow_runs.mlflow_error(exc, settings, f"tagging MLflow run {run_id}") from None


def _download_onnx(
    settings: Settings, model_uri: str, destination: Path, run_id: str
) -> tuple[bytes, Path]:
    """The bytes of the ``.onnx`` file of an MLflow ONNX model, and the model's directory."""
    import mlflow
    from mlflow.exceptions import MlflowException

    destination.mkdir(parents=True)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri,
                dst_path=str(destination),
                tracking_uri=settings.mlflow.tracking_uri,
            )
        )
    except (MlflowException, OSError) as exc:
        raise mlflow_runs.mlflow_error(
            exc, settings, f"ONNX model {model_uri} of run {run_id}"
        ) from None
    files = sorted(local.rglob("*.onnx"))
    if not files:
        raise RegistryError(
            "INVALID_INPUT", f"MLflow run {run_id}: the model {model_uri} holds no .onnx file"
        )
    return files[0].read_bytes(), local


def _library_versions(
    client: Any, artifact: bytes, model_dir: Path, sklearn_uri: str | None
) -> dict[str, str]:
    """Versions the run recorded (requirements, MLmodel, ONNX producer), else this environment's."""
    recorded: dict[str, str] = {}
    recorded.update(_requirements(model_dir / "requirements.txt"))
    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
        if mlmodel.get("mlflow_version"):
            recorded["mlflow"] = str(mlmodel["mlflow_version"])
    except (OSError, yaml.YAMLError):
        pass
    try:
        import onnx

        proto = onnx.load_model_from_string(artifact)  # protobuf parse, no code execution
        if proto.producer_name == "skl2onnx" and proto.producer_version:
            recorded["skl2onnx"] = proto.producer_version
    except Exception:  # a malformed graph is reported by the parity check, not here
        pass
    if sklearn_uri and "scikit-learn" not in recorded:
        recorded.update(_sklearn_requirements(client, sklearn_uri))
    versions: dict[str, str] = {}
    for key, distribution in LIBRARIES.items():
        if key in recorded:
            versions[key] = recorded[key]
        else:
            try:
                versions[key] = importlib_metadata.version(distribution)
            except importlib_metadata.PackageNotFoundError:
                continue
    return versions


def _requirements(path: Path) -> dict[str, str]:
    """``name==version`` pins of a requirements file, keyed by the names in LIBRARIES."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    pins = {}
    for line in lines:
        package, sep, version = line.strip().partition("==")
        if sep and package.strip().lower() in LIBRARIES:
            pins[package.strip().lower()] = version.strip()
    return pins


def _sklearn_requirements(client: Any, sklearn_uri: str) -> dict[str, str]:
    """Pins of the sklearn flavour's requirements.txt (only that file is fetched)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    model_id = sklearn_uri.rsplit("/", 1)[-1]
    try:
        location = client.get_logged_model(model_id).artifact_location
        with tempfile.TemporaryDirectory(prefix="bridge-req-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/requirements.txt", dst_path=tmp
            )
            return _requirements(Path(path))
    except (MlflowException, OSError, AttributeError) as exc:
        log.info("no requirements of %s (%s); using this environment's versions", sklearn_uri, exc)
        return {}


def _from_millis(value: int | None) -> Any:
    from datetime import datetime

    return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)
