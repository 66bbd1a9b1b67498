"""Unit tests of the runtime pieces: ONNX sessions from bytes, the cache, shared pointer reads."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
from api_fixtures import FAMILIES, _candidates
from conftest import data_path

from api.active import SharedRead
from api.runtime import SessionCache, load_model
from conf.settings import load_settings
from registry_bridge.errors import RegistryError


@pytest.fixture(scope="module")
def candidate():
    settings = load_settings(env={"VERTEBRAL_DATA": str(data_path())})
    return _candidates(settings.data, settings.training.seed, settings.training.test_size)[
        FAMILIES[1]
    ]


def _load(candidate, data=None, schema=None):
    draft = candidate.draft
    return load_model(
        draft.name,
        7,
        "run",
        draft.classes,
        schema or draft.input_schema,
        data if data is not None else candidate.artifact,
        onnx_io=draft.onnx_io,
    )


def test_session_from_bytes_matches_recorded_predictions(candidate):
    """Check that the served session reproduces the sklearn example labels and probabilities."""
    model = _load(candidate)
    example = candidate.draft.input_example
    scored = model.predict(np.asarray(example["inputs"], dtype=np.float32))
    assert scored.labels == example["labels"]
    assert np.allclose(scored.probabilities, example["probabilities"], atol=1e-5)


@pytest.mark.parametrize("data", [b"not an onnx graph", pickle.dumps({"a": 1})])
def test_bytes_that_are_not_onnx_are_refused_not_unpickled(candidate, data):
    """Check that arbitrary bytes (a pickle included) give CONFLICT naming the version."""
    with pytest.raises(RegistryError, match="version 7 cannot be served") as caught:
        _load(candidate, data=data)
    assert caught.value.code == "CONFLICT"


def test_schema_wider_than_the_graph_is_refused(candidate):
    """Check that metadata listing more features than the graph takes is a CONFLICT."""
    schema = [*candidate.draft.input_schema, {"name": "extra", "min": 0, "max": 1}]
    with pytest.raises(RegistryError, match="takes 6 features, the schema lists 7"):
        _load(candidate, schema=schema)


def test_cache_loads_each_version_once_under_concurrency(candidate):
    """Check that many threads asking for one version trigger one load."""
    cache = SessionCache(size=2)
    loads = []

    def loader():
        loads.append(1)
        time.sleep(0.05)
        return _load(candidate)

    threads = [threading.Thread(target=cache.get_or_load, args=("m", 1, loader)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert cache.peek("m", 1) is not None
    cache.get_or_load("m", 2, lambda: _load(candidate))
    cache.get_or_load("m", 3, lambda: _load(candidate))
    assert cache.peek("m", 1) is None  # least recently used, beyond the size


def test_shared_read_never_answers_with_a_read_older_than_the_call():
    """Check that concurrent callers share reads, each getting one begun after it called."""
    begun: list[float] = []

    def read() -> float:
        started = time.monotonic()
        begun.append(started)
        time.sleep(0.02)
        return started

    shared = SharedRead(read)
    answers: list[tuple[float, float]] = []

    def call() -> None:
        called = time.monotonic()
        answers.append((called, shared()))

    threads = [threading.Thread(target=call) for _ in range(40)]
    for thread in threads:
        thread.start()
        time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert len(answers) == 40
    assert all(read_began >= called for called, read_began in answers)
    assert len(begun) < 40  # reads were shared


def test_shared_read_hands_errors_to_every_waiter():
    """Check that a failed read raises in the callers that waited for it."""

    def read() -> None:
        time.sleep(0.02)
        raise RegistryError("REGISTRY_UNAVAILABLE", "down")

    shared = SharedRead(read)
    errors: list[str] = []

    def call() -> None:
        try:
            shared()
        except RegistryError as exc:
            errors.append(exc.code)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == ["REGISTRY_UNAVAILABLE"] * 5


def test_cache_drops_the_least_recently_used_not_the_oldest_loaded(candidate):
    """Check that a version served since (peek, the hot path) outlives one loaded later but
    unused, within api.max_loaded_versions."""
    cache = SessionCache(size=2)
    cache.get_or_load("a", 1, lambda: _load(candidate))
    cache.get_or_load("b", 1, lambda: _load(candidate))
    assert cache.peek("a", 1) is not None  # a request for a v1: now the most recent
    cache.get_or_load("c", 1, lambda: _load(candidate))
    assert cache.peek("a", 1) is not None and cache.peek("c", 1) is not None
    assert cache.peek("b", 1) is None
    assert cache.versions("a") == [1] and cache.versions("b") == []


def test_loading_one_version_never_stalls_another(candidate):
    """Check that while one (name, version) is loading, another is loaded and served: no
    lock of the cache is held during a load."""
    cache = SessionCache(size=4)
    cache.get_or_load("served", 1, lambda: _load(candidate))
    release = threading.Event()
    loading = threading.Event()

    def slow_loader():
        loading.set()
        assert release.wait(10)
        return _load(candidate)

    slow = threading.Thread(target=cache.get_or_load, args=("big", 1, slow_loader))
    slow.start()
    try:
        assert loading.wait(5)
        started = time.monotonic()
        assert cache.peek("served", 1) is not None
        assert cache.get_or_load("other", 2, lambda: _load(candidate)) is not None
        assert time.monotonic() - started < 5  # did not wait for the slow load
        assert cache.peek("big", 1) is None
    finally:
        release.set()
        slow.join()
    assert cache.peek("big", 1) is not None


def test_a_failed_load_is_retried_by_the_next_caller(candidate):
    """Check that a loader's error reaches its caller and leaves no gate behind."""
    cache = SessionCache(size=2)

    def broken():
        raise RegistryError("CONFLICT", "broken bytes")

    with pytest.raises(RegistryError, match="broken bytes"):
        cache.get_or_load("m", 1, broken)
    assert cache.get_or_load("m", 1, lambda: _load(candidate)) is cache.peek("m", 1)
