"""Fixtures for the API tests: two real published ONNX versions and an app serving them.

The expensive part (fitting two small pipelines on the real data and converting them
with skl2onnx) runs once per session; each test publishes the bytes into its own
throwaway registry database through the real ``ModelStore``, so tests never share state.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from conf.contract import FEATURES, ONNX_IO
from conf.settings import Settings
from pipelines.candidate import convert_to_onnx, evaluate, split_dataset
from pipelines.data import load_dataset
from pipelines.families import build_pipeline, get_family
from registry_bridge import onnx_check
from registry_bridge.entities import ModelVersionDraft
from registry_bridge.store import ModelStore

MODEL = "vertebral-column"
FAMILIES = ("logistic_regression", "knn")  # v1, v2: different models, different answers


@dataclass(frozen=True)
class Candidate:
    draft: ModelVersionDraft
    artifact: bytes
    test_inputs: np.ndarray  # the test split, for requests


@dataclass
class Published:
    store: ModelStore
    settings: Settings
    versions: dict[str, int]  # family -> version number
    candidates: dict[str, Candidate]

    @property
    def inputs(self) -> np.ndarray:
        return self.candidates[FAMILIES[0]].test_inputs


@functools.lru_cache(maxsize=1)
def _candidates(data_settings: Any, seed: int, test_size: float) -> dict[str, Candidate]:
    dataset = load_dataset(data_settings)
    split = split_dataset(dataset, test_size, seed)
    found: dict[str, Candidate] = {}
    for family in FAMILIES:
        draft, artifact, _ = fitted_draft(MODEL, family, dataset, split, seed)
        found[family] = Candidate(draft, artifact, split.x_test.to_numpy(dtype=np.float32))
    return found


def fitted_draft(
    name: str, family: str, dataset: Any, split: Any, seed: int, threshold: Any = None
) -> tuple[ModelVersionDraft, bytes, Any]:
    """A family's default pipeline fitted on ``split``, converted, and its version draft
    (what a candidate run would give, without MLflow); also its evaluation."""
    params = get_family(family).defaults()
    pipeline = build_pipeline(family, params, seed)
    pipeline.fit(split.x_train, split.y_train)
    evaluation = evaluate(pipeline, split, threshold)
    block = {
        "inputs": split.x_test.to_numpy(dtype=float).tolist(),
        "labels": [str(x) for x in evaluation.labels],
        "probabilities": evaluation.probabilities.tolist(),
    }
    card = {}
    if threshold is not None:
        card = threshold.to_card()
        block.update(threshold=threshold.value, positive_class=threshold.positive_class)
    schema = [
        {
            "name": f,
            "dtype": "float64",
            "min": float(split.x_train[f].min()),
            "max": float(split.x_train[f].max()),
        }
        for f in FEATURES
    ]
    draft = ModelVersionDraft(
        name=name,
        run_id=None,
        experiment_id=None,
        source=f"test:{family}" + (f":{dataset.variant}" if threshold is not None else ""),
        model_family=family,
        params=params,
        metrics=evaluation.metrics,
        classes=list(evaluation.classes),
        input_schema=schema,
        data_fingerprint=dataset.fingerprint,
        library_versions={},
        onnx_io=dict(ONNX_IO),
        input_example=onnx_check.input_example(block),
        variant=dataset.variant,
        created_by="tests",
        **card,
    )
    return draft, convert_to_onnx(pipeline, family).SerializeToString(), evaluation


def publish_candidates(store: ModelStore, settings: Settings) -> Published:
    """Publish v1 (logistic regression) and v2 (kNN) and activate v1."""
    candidates = _candidates(settings.data, settings.training.seed, settings.training.test_size)
    versions = {}
    for family in FAMILIES:
        result = store.publish_model_version(candidates[family].draft, candidates[family].artifact)
        versions[family] = result.version.version
    store.set_active_version(MODEL, versions[FAMILIES[0]], by="tests", reason="fixture")
    return Published(store, settings, versions, candidates)


@pytest.fixture
def published(settings: Settings, mongo_client: Any) -> Iterator[Published]:
    """Two published versions in the test's own database, v1 active."""
    store = ModelStore(mongo_client, settings)
    yield publish_candidates(store, settings)


def make_app(settings: Settings, client: Any = None, **config: Any) -> Flask:
    from api import create_app

    test_config: dict[str, Any] = {"TESTING": True, "SETTINGS": settings, **config}
    if client is not None:
        test_config["MONGO_CLIENT"] = client
    return create_app(test_config)


@pytest.fixture
def app(published: Published, mongo_client: Any) -> Flask:
    return make_app(published.settings, mongo_client)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def with_api(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with some ``api`` knobs changed."""
    return replace(settings, api=replace(settings.api, **changes))


def record(row: np.ndarray) -> dict[str, float]:
    """One request record from a feature row."""
    return {name: float(value) for name, value in zip(FEATURES, row, strict=False)}


def output_dir(settings: Settings) -> Path:
    return Path(settings.api.output_dir)
