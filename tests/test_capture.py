"""Capture: records written off the request path as columnar buckets, read back exactly;
drops counted, failures contained, retention."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from flask import Flask
from inference_records import captured_records, records_bucket

from api import capture as capture_module
from api.capture import Capture
from api.metrics import CAPTURE_DROPPED, CAPTURE_FAILED
from conf.settings import CaptureSettings
from registry_bridge.monitoring.inference_log import INFERENCE_LOG, read_bucket

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


def record(capture: Capture, n: int, request_id: str = "req-42", **kwargs) -> None:
    capture.record("predict", Model, *scored(n), request_id=request_id, latency_ms=1.5, **kwargs)


def test_sampled_records_are_written_with_what_monitoring_needs(registry_db):
    """Check each record is kept with its version, time, features, label, probabilities,
    latency and the request id, in one bucket document for the batch written (no Flask:
    record() runs outside any request)."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100))
    assert capture.sampled()
    record(capture, 3)
    assert capture.flush()
    docs = sorted(captured_records(registry_db, "m"), key=lambda r: r["row"])
    assert len(docs) == 3 and registry_db[INFERENCE_LOG].count_documents({}) == 1
    first = docs[0]
    assert (first["name"], first["version"], first["source"]) == ("m", 3, "predict")
    assert first["features"] == {"a": 0.0, "b": 1.0} and first["label"] == "y"
    assert first["probabilities"] == {"x": 0.25, "y": 0.75}
    assert first["request_id"] == "req-42" and first["row"] == 0
    assert abs(first["at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert first["latency_ms"] == 1.5
    assert registry_db[INFERENCE_LOG].find_one({"request_ids": "req-42"}) is not None
    assert registry_db[INFERENCE_LOG].find_one({"request_ids": "other"}) is None


def test_records_round_trip_exactly(registry_db):
    """Check features (as float32, what the model saw), labels, probabilities, request ids,
    sources, rows, times and latencies come back as they were queued, across requests of
    several versions and sources, in a bucket of a handful of BSON elements."""
    rng = np.random.default_rng(7)
    capture = Capture(registry_db, CaptureSettings(sample_percent=100))
    sent = []
    for i in range(40):
        n = 1 + i % 3
        matrix = rng.normal(50, 20, (n, 2))  # float64, as validate_records gives it
        probabilities = rng.dirichlet([1, 1], n).astype(np.float32)
        labels = [("x", "y")[int(k)] for k in probabilities.argmax(axis=1)]
        model = Model if i % 4 else type("Other", (Model,), {"version": 4})
        source = "invocations" if i % 5 == 0 else "predict"
        latency = None if i == 3 else float(i) / 8
        capture.record(
            source, model, matrix, labels, probabilities, request_id=f"r{i}", latency_ms=latency
        )
        sent.append((model.version, source, f"r{i}", latency, matrix, labels, probabilities))
    assert capture.flush()
    back = {(r["request_id"], r["row"]): r for r in captured_records(registry_db, "m")}
    assert len(back) == sum(len(s[5]) for s in sent)
    for version, source, rid, latency, matrix, labels, probabilities in sent:
        for row in range(len(labels)):
            got = back[rid, row]
            assert (got["version"], got["source"], got["latency_ms"]) == (version, source, latency)
            assert got["label"] == labels[row]
            assert [got["features"][f] for f in FEATURES] == matrix[row].astype(np.float32).tolist()
            assert [got["probabilities"][c] for c in Model.classes] == probabilities[row].tolist()
    times = [r["at"] for r in back.values()]
    assert max(times) - min(times) < timedelta(seconds=30)
    assert abs(min(times) - datetime.now(UTC)) < timedelta(minutes=1)
    docs = list(registry_db[INFERENCE_LOG].find())
    assert sorted(d["version"] for d in docs) == [3, 4]
    for doc in docs:
        read = read_bucket(doc)
        assert doc["at"].timestamp() == pytest.approx(read.at.min(), abs=1e-3)
        assert "records" not in doc and len(doc) < 25 and len(doc["request_ids"]) <= 40


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
    """Check at most max_rows_per_request rows of one upload are kept over its chunks
    (numbered within the upload), and a row without a prediction is kept with its bad cell
    missing and no probabilities; the upload's request id is the client's."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100, max_rows_per_request=5))
    capture.record_batch_rows(Model, scored_chunk(3))
    capture.record_batch_rows(Model, scored_chunk(3))
    assert capture.flush()
    docs = sorted(captured_records(registry_db, "m"), key=lambda r: r["row"])
    assert [d["source"] for d in docs] == ["batch"] * 5
    assert [d["row"] for d in docs] == [0, 1, 2, 3, 4]
    assert {d["request_id"] for d in docs} == {"req-42"}
    bad = [d for d in docs if d["label"] is None]
    assert [d["row"] for d in bad] == [0, 3]
    assert bad[0]["features"] == {"a": 0.0, "b": None} and bad[0]["probabilities"] is None
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


class _Slow(_Blocked):
    """A database whose every write takes 50 ms, counting the documents written."""

    def __init__(self):
        super().__init__()
        self.documents = 0

    def insert_many(self, docs, ordered=True):
        time.sleep(0.05)
        self.documents += len(docs)


def test_records_arriving_during_a_write_wait_for_the_next_batch():
    """Check the writer does not write the few records queued during a write at once (one
    small bucket after each write): a steady trickle goes out in a few buckets."""
    db = _Slow()
    capture = Capture(db, CaptureSettings(sample_percent=100))
    for i in range(100):  # one request every 10 ms for 1 s: two polls of the writer
        record(capture, 1, request_id=f"r{i}")
        time.sleep(0.01)
    assert capture.flush()
    assert db.documents <= 4  # going on after each write made about one per write


def test_a_full_queue_drops_and_counts_without_waiting():
    """Check that when the writer is stuck, records beyond the queue are dropped, counted,
    and the request does not wait."""
    db = _Blocked()
    capture = Capture(db, CaptureSettings(sample_percent=100, queue_size=4))
    before = counter_value(CAPTURE_DROPPED)
    try:
        for i in range(50):
            record(capture, 1, request_id=f"r{i}")
        dropped = counter_value(CAPTURE_DROPPED) - before
        assert 42 <= dropped <= 46  # the writer may have taken a few out meanwhile
        record(capture, 3)  # a request's records are queued or dropped together
        assert counter_value(CAPTURE_DROPPED) - before == dropped + 3
    finally:
        db.release.set()
    assert capture.flush()


def test_a_failing_database_loses_the_batch_not_the_prediction():
    """Check a refused write is counted and the caller never sees an exception."""
    db = _Blocked(error=RuntimeError("server down"))
    db.release.set()
    capture = Capture(db, CaptureSettings(sample_percent=100))
    before = counter_value(CAPTURE_FAILED)
    record(capture, 2)
    assert capture.flush()
    assert counter_value(CAPTURE_FAILED) - before == 2


def test_a_broken_record_never_raises(caplog):
    """Check that an error while queueing or writing records is logged, not raised, and a
    record the writer cannot store counts as failed."""
    capture = Capture(_Blocked(), CaptureSettings(sample_percent=100))
    capture.record(
        "predict", Model, np.zeros((1, 2)), [], np.zeros((1, 2)), request_id="r", latency_ms=None
    )
    assert "capture failed" in caplog.text
    before = counter_value(CAPTURE_FAILED)
    db = _Blocked()
    db.release.set()
    broken = Capture(db, CaptureSettings(sample_percent=100))
    broken.record(  # three features where the model has two: the bucket cannot hold it
        "predict", Model, np.zeros((1, 3)), ["x"], np.zeros((1, 2)), request_id="r", latency_ms=1
    )
    assert broken.flush()
    assert counter_value(CAPTURE_FAILED) - before == 1


def test_retention_deletes_old_records_by_query(registry_db):
    """Check the writer's purge removes records older than retention_days and keeps the rest
    (what keeps retention working where the TTL index does nothing)."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100, retention_days=2))
    now = datetime.now(UTC)
    registry_db[INFERENCE_LOG].insert_many(
        [records_bucket("m", 1, [{"at": now - timedelta(days=d)}]) for d in (0, 1, 3, 10)]
    )
    assert capture.purge() == 2
    ages = sorted(
        round((now - r["at"]).total_seconds() / 86400) for r in captured_records(registry_db, "m")
    )
    assert ages == [0, 1]


def test_client_request_ids_are_kept_only_when_plain():
    """Check a hostile or absent X-Request-Id is replaced by a fresh one, a plain one kept."""
    assert capture_module.request_id("abc-1") == "abc-1"
    for given in ("<script>", "", None, "x" * 65):
        rid = capture_module.request_id(given)
        assert rid != given and len(rid) == 32 and int(rid, 16) >= 0
    assert capture_module.request_id(None) != capture_module.request_id(None)


def _entry(n: int, request_id: str):
    from registry_bridge.monitoring.inference_log import Entry

    matrix, labels, probabilities = scored(n)
    return Entry(time.time(), "predict", request_id, 1.0, matrix, labels, probabilities, None)


def test_a_window_keeps_at_most_its_cap_drawn_uniformly_whatever_comes_first():
    """Check the volume cap's sample: never more than the cap, and a flood sent first (or
    last) does not push out the others: each row is kept with probability cap/offered."""
    from api.capture import WindowSample

    rng = np.random.default_rng(3)
    cap, kept_legit, kept_flood = 50, 0, 0
    for trial in range(400):
        window = WindowSample(cap, rng)
        # 900 flood rows in requests of 1 and 100, then 100 ordinary rows (or the reverse)
        offered = (
            [_entry(1, "flood")] * 400 + [_entry(100, "flood")] * 5 + [_entry(1, "legit")] * 100
        )
        for entry in offered if trial % 2 else reversed(offered):
            window.add(Model, entry)
        sample = window.take()
        rows = [(entry.request_id, len(entry.labels)) for _, entry in sample]
        assert sum(n for _, n in rows) == cap
        kept_legit += sum(n for rid, n in rows if rid == "legit")
        kept_flood += sum(n for rid, n in rows if rid == "flood")
        assert window.seen == 0 and window.take() == []
    share = kept_legit / (kept_legit + kept_flood)
    assert 0.085 < share < 0.115  # 100 of 1,000 rows offered: 10 % (first-come gave 0 or 100 %)


def test_rows_cut_from_a_request_keep_their_row_numbers():
    """Check that a request cut by the sample still names each kept record's row."""
    from api.capture import WindowSample

    window = WindowSample(3, np.random.default_rng(0))
    window.add(Model, _entry(10, "big"))
    ((_, cut),) = window.take()
    assert len(cut.labels) == 3 and len(cut.x) == 3 and len(cut.p) == 3
    assert list(cut.x[:, 0]) == [2.0 * row for row in cut.rows]  # row r holds 2r, 2r+1


def test_a_flood_is_capped_per_window_in_the_database(registry_db):
    """Check capture.max_records_per_minute end to end: 3,000 records offered at once are
    written as one window's share of the cap (60 a minute -> 5 per 5 s window)."""
    capture = Capture(registry_db, CaptureSettings(sample_percent=100, max_records_per_minute=60))
    for i in range(300):
        record(capture, 10, request_id=f"r{i}")
    assert capture.flush()
    written = captured_records(registry_db, "m")
    assert len(written) == 5
    assert len({(r["request_id"], r["row"]) for r in written}) == 5


def test_one_row_requests_are_sampled_as_the_general_path_samples_them():
    """Check the window's one-row path against its general one: the same random stream and
    the same requests (one row and many, below and past the cap) give the same sample."""
    from api.capture import WindowSample

    for seed in range(20):
        sizes = np.random.default_rng(100 + seed).choice([1, 1, 1, 3, 40], size=300)
        offered = [_entry(int(n), f"r{i}") for i, n in enumerate(sizes)]
        fast = WindowSample(60, np.random.default_rng(seed))
        general = WindowSample(60, np.random.default_rng(seed))
        for entry in offered:
            fast.add(Model, entry)
            general._add_rows(Model, entry)
        assert fast.seen == general.seen
        picked = [(e.request_id, _kept_rows(e)) for _, e in fast.take()]
        assert picked == [(e.request_id, _kept_rows(e)) for _, e in general.take()]
        assert sum(len(rows) for _, rows in picked) == 60


def _kept_rows(entry) -> list[int]:
    """The rows of the request an entry of a window's sample holds (None: all of them)."""
    return list(range(len(entry.labels))) if entry.rows is None else [int(r) for r in entry.rows]
