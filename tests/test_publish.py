"""Publishing real candidate MLflow runs (pipelines.candidate) into the registry database."""

from __future__ import annotations

import hashlib
import json

import pytest
from mlflow.tracking import MlflowClient
from registry_samples import file_ids

from conf.contract import MODEL_CARD, cv_mean_key
from pipelines.candidate import quick_candidate_run
from registry_bridge import publish
from registry_bridge.errors import RegistryError
from registry_bridge.store import ModelStore

pytestmark = pytest.mark.slow  # each test fits and logs real candidate runs (about a second each)


@pytest.fixture
def store(registry_db, settings) -> ModelStore:
    return ModelStore(registry_db, settings)


@pytest.fixture
def mlflow_client(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.mlflow.tracking_uri)


def test_publish_records_the_run_and_tags_it(store, settings, mlflow_client, tmp_path):
    """Check that a candidate run becomes v1 with metrics, schema and versions, and is tagged."""
    run_id = quick_candidate_run(settings, family="logistic_regression")
    result = publish.publish_run(store, settings, run_id, by="alice")
    version = result.version
    run = mlflow_client.get_run(run_id)
    assert result.created and version.version == 1 and version.name == settings.api.model_name
    assert version.run_id == run_id and version.experiment_id == run.info.experiment_id
    assert version.source == run.data.tags["onnx_model_uri"]
    assert version.model_family == "logistic_regression" and version.created_by == "alice"
    assert version.metrics["test_f1_macro"] == pytest.approx(run.data.metrics["test_f1_macro"])
    assert {k for k in version.metrics} == {
        k for k in run.data.metrics if k.startswith(("cv_", "test_"))
    }
    assert "onnx_parity_max_abs_diff" not in version.metrics
    assert version.params == run.data.params
    assert version.data_fingerprint == run.data.tags["data_fingerprint"]
    card = json.loads(
        open(mlflow_client.download_artifacts(run_id, MODEL_CARD, str(tmp_path))).read()
    )
    assert version.classes == card["classes"] and version.input_schema == card["input_schema"]
    assert [c["name"] for c in version.input_schema] == card["features"]
    assert all(c["min"] < c["max"] for c in version.input_schema)
    assert set(version.library_versions) >= {
        "onnxruntime",
        "onnx",
        "skl2onnx",
        "scikit-learn",
        "mlflow",
    }
    assert hashlib.sha256(store.read_artifact(version)).hexdigest() == version.sha256
    assert run.data.tags[publish.TAG_VERSION] == "1"
    assert run.data.tags[publish.TAG_FILE_ID] == version.artifact_file_id
    assert run.data.tags[publish.TAG_NAME] == version.name
    # The name's first version gives it its reference set: the run's test split, labelled.
    reference = store.get_reference_set(version.name)
    assert (reference.version, reference.rows) == (1, len(card["evaluation"]["inputs"]))
    assert reference.source == f"test split of {version.label} (MLflow run {run_id})"
    rows = store.read_reference_set(reference)
    assert rows.labels == card["evaluation"]["true_labels"]
    assert rows.features.tolist() == card["evaluation"]["inputs"]


def test_second_run_is_v2_and_republish_returns_the_existing_version(
    store, settings, mlflow_client
):
    """Check numbering across runs, idempotent re-publish, and --new-version."""
    first = quick_candidate_run(settings, family="logistic_regression")
    second = quick_candidate_run(settings, family="knn")
    assert publish.publish_run(store, settings, first).version.version == 1
    assert publish.publish_run(store, settings, second).version.version == 2
    again = publish.publish_run(store, settings, first)
    assert (again.created, again.version.version) == (False, 1)
    forced = publish.publish_run(store, settings, first, new_version=True)
    assert (forced.created, forced.version.version) == (True, 3)
    assert mlflow_client.get_run(first).data.tags[publish.TAG_VERSION] == "3"
    assert len(file_ids(store.db)) == 3
    assert store.verify_model_version(settings.api.model_name, 2).rows_scored == 5
    # Only the first version makes the reference set; later ones are compared on it.
    assert [r.version for r in store.list_reference_sets(settings.api.model_name)] == [1]


def test_publish_registers_the_version_in_mlflow_and_republish_repairs_it(
    store, settings, mlflow_client
):
    """Check publish creates the MLflow model version (source, run, tags), and publishing the
    run again recreates it when it was removed from MLflow (idempotent)."""
    name = settings.api.model_name
    run_id = quick_candidate_run(settings, family="logistic_regression")
    version = publish.publish_run(store, settings, run_id).version
    registered = mlflow_client.get_model_version(name, "1")
    assert registered.source == f"gridfs:///{settings.registry.database}/{name}/1"
    assert registered.run_id == run_id and registered.tags["sha256"] == version.sha256
    mlflow_client.delete_model_version(name, "1")
    again = publish.publish_run(store, settings, run_id)
    assert not again.created
    found = mlflow_client.search_model_versions(f"name = '{name}'")
    assert [mv.tags["registry_version"] for mv in found] == ["1"]


def test_runs_are_listed_best_first_with_their_published_versions(store, settings):
    """Check that `bridge runs` data ranks candidates by the objective and shows publication."""
    ids = [quick_candidate_run(settings, family=f) for f in ("knn", "logistic_regression")]
    publish.publish_run(store, settings, ids[0])
    runs = publish.list_candidate_runs(settings, store)
    key = cv_mean_key(settings.training.objective)
    assert {r.run_id for r in runs} == set(ids)
    assert [r.metrics[key] for r in runs] == sorted((r.metrics[key] for r in runs), reverse=True)
    assert {r.run_id: r.published_versions for r in runs} == {ids[0]: [1], ids[1]: []}
    assert publish.best_candidate_run_id(settings) == runs[0].run_id


def test_unknown_and_non_candidate_runs_are_refused(store, settings, mlflow_client):
    """Check that an unknown run is NOT_FOUND and a run without the candidate tag INVALID_INPUT."""
    with pytest.raises(RegistryError, match="MLflow run 'f00d' not found") as err:
        publish.publish_run(store, settings, "f00d")
    assert err.value.code == "NOT_FOUND"
    run_id = quick_candidate_run(settings)
    mlflow_client.set_tag(run_id, "candidate", "false")
    with pytest.raises(RegistryError, match=f"run {run_id} is not a candidate") as err:
        publish.publish_run(store, settings, run_id)
    assert err.value.code == "INVALID_INPUT"
    with pytest.raises(RegistryError, match="experiment 'nope' not found"):
        publish.list_candidate_runs(settings, store, "nope")


def test_parity_mismatch_publishes_nothing(store, settings, mlflow_client, tmp_path):
    """Check that a model disagreeing with its recorded predictions is refused, leaving nothing."""
    run_id = quick_candidate_run(settings)
    card = json.loads(
        open(mlflow_client.download_artifacts(run_id, MODEL_CARD, str(tmp_path))).read()
    )
    card["evaluation"]["probabilities"][3] = [
        round(p + 0.01, 6) if i == 0 else p
        for i, p in enumerate(card["evaluation"]["probabilities"][3])
    ]
    mlflow_client.log_dict(run_id, card, MODEL_CARD)
    with pytest.raises(
        RegistryError, match=f"refusing to publish MLflow run {run_id}: .*row 3"
    ) as err:
        publish.publish_run(store, settings, run_id)
    assert err.value.code == "CONFLICT"
    assert store.search_model_versions(include_deleted=True) == []
    assert file_ids(store.db) == set()
    assert publish.TAG_VERSION not in mlflow_client.get_run(run_id).data.tags


def test_failure_to_tag_the_run_unpublishes(store, settings, monkeypatch):
    """Check that a publish whose write-back to MLflow fails leaves no version and no file."""
    run_id = quick_candidate_run(settings)

    def mlflow_down(*args, **kwargs):
        raise RegistryError("REGISTRY_UNAVAILABLE", "MLflow tracking store went away")

    monkeypatch.setattr(publish, "_tag_run", mlflow_down)
    with pytest.raises(RegistryError, match="went away"):
        publish.publish_run(store, settings, run_id)
    assert store.search_model_versions() == []
    assert file_ids(store.db) == set()
