"""Capture: records written off the request path, drops counted, failures contained, retention."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from flask import Flask

from api import capture as capture_module
from api.capture import Capture
from api.metrics import CAPTURE_DROPPED, CAPTURE_FAILED
from conf.settings import CaptureSettings
from registry_bridge.monitor import INFERENCE_LOG, bucket, captured_records

FEATURES = ("a", "b")


class Model:
    """What capture reads from a loaded model."""

    name, version, classes = "m", 3, ("x", "y")

    class schema:  # noqa: N801 - stands for InputSchema
        features = FEATURES


def scored(n: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    matrix = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    probabilities = np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (n, 1))
    return matrix, ["y"] * n, probabilities


def counter_value(counter) -> float:
    return counter._value.get()


@pytest.fixture
def request_context():
    app = Flask(__name__)
    with app.test_request_context("/predict", headers={"X-Request-Id": "req-42"}):
        yield


def test_sampled_records_are_written_with_what_monitoring_needs(registry_db, request_context):
    """Check each record is kept with its version, time, features, label, probabilities,
    latency and the request id, in one bucket document for the batch written."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100))
    assert capture.sampled()
    capture.record("predict", Model, *scored(3))
    assert capture.flush()
    docs = sorted(captured_records(registry_db, "m"), key=lambda r: r["row"])
    assert len(docs) == 3 and registry_db[INFERENCE_LOG].count_documents({}) == 1
    first = docs[0]
    assert (first["name"], first["version"], first["source"]) == ("m", 3, "predict")
    assert first["features"] == {"a": 0.0, "b": 1.0} and first["label"] == "y"
    assert first["probabilities"] == {"x": 0.25, "y": 0.75}
    assert first["request_id"] == "req-42" and first["row"] == 0
    assert abs(first["at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert "latency_ms" in first


def scored_chunk(n: int) -> pa.RecordBatch:
    """A scored /batch-predict chunk: input cells as text, then the outputs."""
    return pa.RecordBatch.from_pydict(
        {
            "a": [str(i) for i in range(n)],
            "b": ["oops"] + ["1.5"] * (n - 1),
            "prediction": [""] + ["y"] * (n - 1),
            "prob_x": [None] + [0.25] * (n - 1),
            "prob_y": [None] + [0.75] * (n - 1),
        }
    )


def test_batch_rows_are_capped_per_upload(registry_db, request_context):
    """Check at most max_rows_per_request rows of one upload are kept over its chunks, and a
    row without a prediction is kept with its bad cell missing."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100, max_rows_per_request=5))
    capture.record_batch_rows(Model, scored_chunk(3))
    capture.record_batch_rows(Model, scored_chunk(3))
    assert capture.flush()
    docs = captured_records(registry_db, "m")
    assert [d["source"] for d in docs] == ["batch"] * 5
    bad = [d for d in docs if d["label"] is None]
    assert len(bad) == 2 and bad[0]["features"] == {"a": 0.0, "b": None}
    good = next(d for d in docs if d["label"] == "y")
    assert good["features"]["b"] == 1.5 and good["probabilities"] == {"x": 0.25, "y": 0.75}


def test_zero_percent_captures_nothing_and_starts_no_thread(registry_db, request_context):
    """Check that sample_percent 0 turns capture off."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=0))
    assert not capture.enabled and not any(capture.sampled() for _ in range(100))
    capture.record_batch_rows(Model, scored_chunk(3))
    assert capture._thread is None
    assert registry_db[INFERENCE_LOG].count_documents({}) == 0


def test_partial_sampling_takes_about_its_share():
    """Check that 20 % samples about a fifth of the requests."""
    capture = Capture(_Blocked(), CaptureSettings(sample_percent=20))
    share = sum(capture.sampled() for _ in range(5000)) / 5000
    assert 0.17 < share < 0.23


class _Blocked:
    """A database whose writes wait until released (a stalled server)."""

    def __init__(self, error: Exception | None = None):
        self.release = threading.Event()
        self.error = error

    def __getitem__(self, name):
        return self

    def create_index(self, *args, **kwargs):
        return "ok"

    def delete_many(self, query):
        raise self.error or RuntimeError("no purge here")

    def insert_many(self, docs, ordered=True):
        self.release.wait(10)
        if self.error:
            raise self.error


def test_a_full_queue_drops_and_counts_without_waiting(request_context):
    """Check that when the writer is stuck, records beyond the queue are dropped, counted,
    and the request does not wait."""
    db = _Blocked()
    capture = Capture(db, CaptureSettings(sample_percent=100, queue_size=4))
    before = counter_value(CAPTURE_DROPPED)
    try:
        capture.record("predict", Model, *scored(50))
        dropped = counter_value(CAPTURE_DROPPED) - before
        assert 40 <= dropped <= 46  # the writer may have taken one batch out meanwhile
    finally:
        db.release.set()
    assert capture.flush()


def test_a_failing_database_loses_the_batch_not_the_prediction(request_context):
    """Check a refused write is counted and the caller never sees an exception."""
    db = _Blocked(error=RuntimeError("server down"))
    db.release.set()
    capture = Capture(db, CaptureSettings(sample_percent=100))
    before = counter_value(CAPTURE_FAILED)
    capture.record("predict", Model, *scored(2))
    assert capture.flush()
    assert counter_value(CAPTURE_FAILED) - before == 2


def test_a_broken_record_never_raises(request_context, caplog):
    """Check that an error while building records is logged, not raised."""
    capture = Capture(_Blocked(), CaptureSettings(sample_percent=100))
    capture.record("predict", Model, np.zeros((1, 2)), [], np.zeros((1, 2)))
    assert "capture failed" in caplog.text


def test_retention_deletes_old_records_by_query(registry_db):
    """Check the writer's purge removes records older than retention_days and keeps the rest
    (what keeps retention working where the TTL index does nothing)."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100, retention_days=2))
    now = datetime.now(UTC)
    registry_db[INFERENCE_LOG].insert_many(
        [bucket("m", 1, [{"at": now - timedelta(days=d)}]) for d in (0, 1, 3, 10)]
    )
    assert capture.purge() == 2
    ages = sorted(
        round((now - r["at"]).total_seconds() / 86400) for r in captured_records(registry_db, "m")
    )
    assert ages == [0, 1]


def test_client_request_ids_are_kept_only_when_plain():
    """Check a hostile X-Request-Id is replaced by a fresh one."""
    app = Flask(__name__)
    with app.test_request_context("/predict", headers={"X-Request-Id": "<script>"}):
        rid = capture_module._request_id()
        assert rid != "<script>" and len(rid) == 32
