"""A name holds one kind of model (issue 26, point 1).

Clients of ``vertebral-column`` rely on its three classes and six features: the store
refuses a version whose classes, feature names or variant differ from the versions
already under the name, so the CLI, the API and the mirror all get the refusal.
"""

from __future__ import annotations

import pytest
from registry_samples import draft

from registry_bridge.errors import RegistryError
from registry_bridge.store import ModelStore


@pytest.fixture
def store(registry_db, settings) -> ModelStore:
    return ModelStore(registry_db, settings)


def test_a_two_class_run_is_refused_under_a_three_class_name(store):
    """Check the refusal: one line naming the classes, suggesting --name; nothing stored."""
    first, artifact = draft(run_id="run-3c")
    store.publish_model_version(first, artifact)
    binary, artifact = draft(run_id="run-2c", seed=1, classes=["Abnormal", "Normal"], variant="2C")
    with pytest.raises(RegistryError) as refused:
        store.publish_model_version(binary, artifact)
    message = refused.value.message
    assert refused.value.code == "CONFLICT" and "\n" not in message
    assert "classes Abnormal,Normal (not Hernia,Normal,Spondylolisthesis)" in message
    assert "variant 2C (not 3C)" in message and "--name vertebral-column-2c" in message
    assert [v.version for v in store.search_model_versions("vertebral-column")] == [1]
    # Under its own name it is welcome.
    assert store.publish_model_version(
        draft(name="vertebral-column-2c", run_id="run-2c", seed=1)[0], artifact
    ).created


def test_other_features_are_refused(store):
    """Check a version whose feature names differ from the name's is refused, naming them."""
    first, artifact = draft(run_id="run-a")
    store.publish_model_version(first, artifact)
    schema = [dict(f) for f in first.input_schema]
    schema[0]["name"] = "pelvic_incidence_deg"
    other, artifact = draft(run_id="run-b", seed=1, input_schema=schema)
    with pytest.raises(RegistryError, match="features pelvic_incidence_deg,"):
        store.publish_model_version(other, artifact)


def test_the_same_kind_is_accepted_and_a_deleted_kind_no_longer_binds(store):
    """Check another run of the same kind publishes, and a name whose versions are all deleted
    takes any kind (nothing served under it could change)."""
    first, artifact = draft(run_id="run-a")
    store.publish_model_version(first, artifact)
    assert store.publish_model_version(*draft(run_id="run-b", seed=1)).version.version == 2
    for version in (1, 2):
        store.delete_model_version("vertebral-column", version)
    binary, artifact = draft(run_id="run-2c", seed=2, classes=["Abnormal", "Normal"], variant="2C")
    assert store.publish_model_version(binary, artifact).created
