"""The leased active pointer: reads reused within the lease, activations wait it out."""

from __future__ import annotations

import threading
import time

import onnxruntime
import pytest
from api_fixtures import FAMILIES, MODEL, make_app, record, with_api

from api.active import SharedRead
from registry_bridge import lease
from registry_bridge.store import ModelStore

V1, V2 = FAMILIES


class CountingRead:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls


def test_a_read_is_reused_within_its_lease_and_not_after():
    """Check that callers share a read while its window lasts, and read again at window 0."""
    read = CountingRead()
    leased = SharedRead(read, window=lambda value: 3600.0)
    assert [leased() for _ in range(5)] == [1] * 5
    unleased = SharedRead(read, window=lambda value: 0.0)
    assert [unleased() for _ in range(3)] == [2, 3, 4]


def test_a_failed_read_is_not_reused():
    """Check that an error reaches the caller and the next call reads again."""
    outcomes = iter([RuntimeError("down"), 7])

    def read() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    shared = SharedRead(read, window=lambda value: 3600.0)
    with pytest.raises(RuntimeError, match="down"):
        shared()
    assert shared() == 7


def test_workers_use_the_shorter_lease_and_activations_wait_the_longer():
    """Check the agreement rule: a worker never reuses longer than the stored lease, and an
    activation waits for the lease of the pointer it replaces when it is the longer."""
    assert lease.reuse_window_s(1000, 30) == 0.03
    assert lease.reuse_window_s(20, 30) == 0.02
    assert lease.reuse_window_s(50, 0) == 0.0  # a pointer written without a lease
    assert lease.commit_wait_ms(30, 80) == 80
    assert lease.commit_wait_ms(80, 0) == 80


def test_activation_and_rollback_wait_the_lease_after_the_write(
    published, mongo_client, settings, monkeypatch
):
    """Check that activate and rollback return only after waiting, from the moment the database
    acknowledged the write, the longer of their own lease and the replaced pointer's."""
    waits: list[tuple[int, int | None]] = []

    def record_wait(acknowledged_at: float, wait_ms: int) -> None:
        # The write is acknowledged, so it is what every read sees now.
        state = published.store.get_active_version(MODEL)
        waits.append((wait_ms, state.active_version))

    monkeypatch.setattr(lease, "wait_after", record_wait)
    v1, v2 = published.versions[V1], published.versions[V2]
    long = ModelStore(mongo_client, with_api(settings, pointer_lease_ms=400))
    short = ModelStore(mongo_client, with_api(settings, pointer_lease_ms=30))
    assert long.set_active_version(MODEL, v2).lease_ms == 400
    assert short.rollback(MODEL).lease_ms == 30
    short.set_active_version(MODEL, v2)
    assert waits == [(400, v2), (400, v1), (30, v2)]
    assert long.get_active_version(MODEL).lease_ms == 30  # what workers now use


def test_lease_zero_reads_the_pointer_for_every_request(published, mongo_client):
    """Check that with pointer_lease_ms 0 each request reads the pointer (today's behaviour)."""
    from api.metrics import REGISTRY_READS

    zero = with_api(published.settings, pointer_lease_ms=0)
    ModelStore(mongo_client, zero).set_active_version(MODEL, published.versions[V2])
    client = make_app(zero, mongo_client).test_client()
    before = REGISTRY_READS._value.get()
    for _ in range(5):
        assert client.post("/predict", json=record(published.inputs[0])).status_code == 200
    assert REGISTRY_READS._value.get() - before == 5


def test_the_answering_worker_loads_an_activated_version_once(client, published, monkeypatch):
    """Check that POST /models/activate builds one onnxruntime session for the new version
    (its validation reuses the session the worker then serves with)."""
    built = []
    real = onnxruntime.InferenceSession

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    v2 = published.versions[V2]
    answer = client.post("/models/activate", json={"name": MODEL, "version": v2})
    assert answer.status_code == 200, answer.json
    served = client.post("/predict", json=record(published.inputs[0]))
    assert served.json["model"]["version"] == v2
    assert len(built) == 1


def test_a_read_past_half_its_lease_is_renewed_without_making_the_request_wait():
    """Check that a request served from a read past half its lease gets that read at once and
    wakes a background read, so the next request finds a newer one."""
    now = [0.0]
    read = CountingRead()
    shared = SharedRead(read, window=lambda value: 1.0, clock=lambda: now[0])
    assert shared() == 1
    now[0] = 0.6  # past half the lease: still valid
    assert shared() == 1
    deadline = time.monotonic() + 10
    while read.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read.calls == 2
    now[0] = 1.05  # the first read has expired; the one made ahead began at 0.6
    assert shared() == 2 and read.calls == 2


def test_a_request_past_the_lease_waits_for_the_read_in_flight_not_for_another():
    """Check that a request arriving after the lease ran out, while the read made ahead is in
    flight and began within one lease before it, is served by that read (no third read),
    and that one arriving later than a lease after that read began waits for a new one."""
    now = [0.0]
    release = threading.Event()
    calls = []

    def read() -> int:
        calls.append(now[0])
        if len(calls) == 2:  # the read made ahead: slow, it ends after the lease ran out
            release.wait(10)
        return len(calls)

    shared = SharedRead(read, window=lambda value: 1.0, clock=lambda: now[0])
    assert shared() == 1
    now[0] = 0.6  # past half the lease: wakes the read ahead, which begins at 0.6
    assert shared() == 1
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [0.0, 0.6]
    now[0] = 1.05  # the first read expired; the one in flight began 0.45 before this call
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(shared()))
    waiting.start()
    time.sleep(0.05)
    assert answers == []  # it waits: the read in flight has not answered yet
    release.set()
    waiting.join(10)
    assert answers == [2] and len(calls) == 2
    now[0] = 1.7  # 1.1 after the last read began: too old, a new read
    assert shared() == 3 and calls == [0.0, 0.6, 1.7]
