"""More names for the multi-model tests: a second 3-class name and a 2-class one.

The 3-class name re-publishes the session's logistic regression of ``api_fixtures`` under
another name; the 2-class one fits a logistic regression on the 2-class file with a fixed
threshold of 0.7 on P(Abnormal) (far enough from the graph's 0.5 that some rows change
label), the same way ``api_fixtures`` builds its candidates: no MLflow run, fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from api_fixtures import FAMILIES, Published, _candidates, fitted_draft

from conf.settings import Settings
from pipelines.candidate import split_dataset
from pipelines.data import load_dataset, variant_file
from pipelines.threshold import Threshold
from registry_bridge.entities import ModelVersionDraft
from registry_bridge.store import ModelStore

OTHER = "vertebral-other"  # a second 3-class name
BINARY = "vertebral-2c"
THRESHOLD = 0.7
POSITIVE = "Abnormal"


@dataclass(frozen=True)
class Binary:
    version: int
    inputs: np.ndarray  # test rows, float32, in FEATURES order
    probabilities: np.ndarray  # sklearn's, columns in classes order
    classes: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _binary_candidate(
    data_settings: Any, seed: int
) -> tuple[ModelVersionDraft, bytes, np.ndarray, np.ndarray]:
    assert data_settings.path is not None
    two = replace(data_settings, variant="2C", path=variant_file(data_settings.path, "2C"))
    dataset = load_dataset(two)
    split = split_dataset(dataset, 0.2, seed)
    threshold = Threshold(THRESHOLD, "fixed", POSITIVE)
    draft, artifact, evaluation = fitted_draft(BINARY, FAMILIES[0], dataset, split, seed, threshold)
    return draft, artifact, split.x_test.to_numpy(dtype=np.float32), evaluation.probabilities


def publish_binary(store: ModelStore, settings: Settings) -> Binary:
    """Publish and activate version 1 of the 2-class name."""
    draft, artifact, inputs, probabilities = _binary_candidate(
        settings.data, settings.training.seed
    )
    version = store.publish_model_version(draft, artifact).version.version
    store.set_active_version(BINARY, version, by="tests", reason="binary fixture")
    return Binary(version, inputs, np.asarray(probabilities), tuple(draft.classes))


def publish_other(published: Published) -> int:
    """Publish and activate version 1 of a second 3-class name (the kNN of v2)."""
    settings = published.settings
    candidates = _candidates(settings.data, settings.training.seed, settings.training.test_size)
    candidate = candidates[FAMILIES[1]]
    draft = replace(candidate.draft, name=OTHER)
    version = published.store.publish_model_version(draft, candidate.artifact).version.version
    published.store.set_active_version(OTHER, version, by="tests", reason="second name")
    return version
