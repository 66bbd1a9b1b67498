"""Feedback (registry_bridge/monitoring/feedback.py and ``bridge feedback``): labels joined
to captured requests, refused row by row, all or nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from feedback_samples import BINARY, NAME, capture, publish
from registry_samples import CLASSES

from registry_bridge.errors import RegistryError
from registry_bridge.monitoring import feedback, feedback_rows
from registry_bridge.monitoring.feedback import FEEDBACK, read_labelled
from registry_bridge.monitoring.feedback_rows import LabelRow
from registry_bridge.store import ModelStore


@pytest.fixture
def store(registry_db, settings) -> ModelStore:
    """Version 1 of NAME (3 classes) with four captured requests, r-3 of two records."""
    store = ModelStore(registry_db, settings.registry)
    publish(store)
    capture(
        registry_db,
        NAME,
        1,
        [("r-1", ["Hernia"]), ("r-2", ["Normal"]), ("r-3", ["Normal", "Hernia"]), ("r-4", [None])],
        at=1_700_000_000.0,
    )
    return store


def rows(*items: tuple) -> list[LabelRow]:
    return [LabelRow(n, *item) for n, item in enumerate(items, start=1)]


def refused(store: ModelStore, labels: list[LabelRow], **kw) -> list[dict]:
    with pytest.raises(RegistryError) as caught:
        feedback.record_feedback(store.db, labels, **kw)
    assert caught.value.code == "INVALID_INPUT"
    assert store.db[FEEDBACK].count_documents({}) == 0  # nothing half-applied
    return caught.value.details


def test_labels_are_stored_joined_to_their_captured_requests(store):
    """Check each label is kept with its name, version, decision and the request's time."""
    result = feedback.record_feedback(
        store.db,
        rows(("r-1", "Hernia"), ("r-2", "Hernia"), ("r-3", "Spondylolisthesis", 1)),
        name=NAME,
        by="tester",
        now=datetime(2026, 12, 7, tzinfo=UTC),
    )
    assert result.stored == 3 and result.versions == {(NAME, 1): 3}
    [doc] = store.db[FEEDBACK].find({})
    assert doc["keys"] == ["r-1#0", "r-2#0", "r-3#1"] and doc["by"] == "tester"
    assert doc["first_at"] == datetime.fromtimestamp(1_700_000_000, UTC)
    assert doc["labelled_at"] == datetime(2026, 12, 7, tzinfo=UTC)
    window = (datetime(2023, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    labelled = read_labelled(store.db, NAME, *window)[1]
    code = {c: i for i, c in enumerate(CLASSES)}
    assert labelled.truth.tolist() == [code["Hernia"], code["Hernia"], code["Spondylolisthesis"]]
    assert labelled.decision.tolist() == [code["Hernia"], code["Normal"], code["Hernia"]]


def test_every_bad_row_is_named_and_nothing_is_stored(store):
    """Check one refusal lists each bad row (its number, request id and why), the good
    rows of the call are not stored, and an echoed id cannot start a formula."""
    details = refused(
        store,
        rows(
            ("r-1", "Hernia"),  # good
            ("nope", "Hernia"),  # unknown id
            ("r-2", "hernia"),  # not a class (classes are case-sensitive)
            ("r-1", "Normal"),  # twice in the call
            ("r-3", "Normal"),  # two records captured: which one?
            ("r-3", "Normal", 7),  # a record that was not captured
            ("r-4", "Normal"),  # a record without a prediction
            ("=cmd|' /C calc'!A0", "Normal"),  # not an id this API gives
        ),
    )
    by_row = {d["row"]: d for d in details}
    assert sorted(by_row) == [2, 3, 4, 5, 6, 7, 8]
    assert by_row[2]["request_id"] == "nope" and "no captured request" in by_row[2]["problem"]
    assert by_row[3]["field"] == "label" and "'hernia' is not a class" in by_row[3]["problem"]
    assert "twice in this call (row 1)" in by_row[4]["problem"]
    assert by_row[5]["field"] == "record" and "2 captured records" in by_row[5]["problem"]
    assert "7 was not captured (captured: [0, 1])" in by_row[6]["problem"]
    assert "no prediction" in by_row[7]["problem"]
    assert by_row[8]["request_id"].startswith("'=")  # neutralised: no spreadsheet formula


def test_a_record_labelled_before_is_refused_in_a_later_call(store):
    """Check a second call naming a labelled record is refused whole, naming that row."""
    feedback.record_feedback(store.db, rows(("r-1", "Hernia")))
    details = refused_after_first(store, rows(("r-2", "Normal"), ("r-1", "Normal")))
    assert [(d["row"], d["request_id"]) for d in details] == [(2, "r-1")]
    assert "already labelled" in details[0]["problem"]


def refused_after_first(store: ModelStore, labels: list[LabelRow]) -> list[dict]:
    before = store.db[FEEDBACK].count_documents({})
    with pytest.raises(RegistryError) as caught:
        feedback.record_feedback(store.db, labels)
    assert store.db[FEEDBACK].count_documents({}) == before
    return caught.value.details


def test_a_concurrent_call_holding_the_same_record_is_withdrawn(store, monkeypatch):
    """Check that when another call stored the same record between the check and the
    write, this call withdraws its own document (the embedded server has no unique
    multikey index to refuse it)."""
    check = feedback._already_labelled

    def racing(db, joined):
        problems = check(db, joined)
        db[FEEDBACK].insert_one({"name": NAME, "call": "other", "keys": ["r-2#0"]})
        return problems

    monkeypatch.setattr(feedback, "_already_labelled", racing)
    with pytest.raises(RegistryError) as caught:
        feedback.record_feedback(store.db, rows(("r-1", "Hernia"), ("r-2", "Normal")))
    assert [d["row"] for d in caught.value.details] == [2]
    assert "concurrent" in caught.value.details[0]["problem"]
    assert store.db[FEEDBACK].count_documents({}) == 1  # only the other call's document


def test_unknown_ids_may_be_skipped_and_a_name_limits_the_join(store, registry_db):
    """Check skip_unknown stores the rest and reports the unknown ids; a name keeps the
    join to that model's requests."""
    publish(store, BINARY)
    capture(registry_db, BINARY, 1, [("b-1", ["Abnormal"])])
    details = refused(store, rows(("b-1", "Normal")), name=NAME)
    assert "no captured request for vertebral-column" in details[0]["problem"]
    result = feedback.record_feedback(
        store.db, rows(("b-1", "Normal"), ("gone", "Normal")), skip_unknown=True
    )
    assert result.stored == 1 and result.versions == {(BINARY, 1): 1}
    assert [(s["row"], s["request_id"]) for s in result.skipped] == [(2, "gone")]


def test_a_request_id_captured_twice_is_ambiguous(store, registry_db):
    """Check an id a client reused for two captured requests is refused, not guessed."""
    capture(registry_db, NAME, 1, [("r-1", ["Normal"])])
    [detail] = refused(store, rows(("r-1", "Normal")))
    assert "names 2 captured requests" in detail["problem"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id,label\nr-1,Hernia\n", "header"),
        ("request_id,label\nr-1\n", "has 1 cell(s), not 2"),
        ("request_id,label\nr-1,\n", "label is missing"),
        ("request_id,label,record\nr-1,Hernia,-1\n", "whole number"),
        ("request_id,label\nr-1," + "x" * 101 + "\n", "at most 100"),
        ("request_id,label\n" + "r" * 65 + ",Hernia\n", "not a request id"),
    ],
)
def test_csv_rows_are_checked_one_by_one(text, problem):
    """Check a malformed CSV header or row is refused naming it."""
    with pytest.raises(RegistryError) as caught:
        feedback_rows.parse_labels_file(text.encode())
    assert caught.value.code == "INVALID_INPUT"
    found = caught.value.message + json.dumps(caught.value.details)
    assert problem in found, found


def test_feedback_is_bounded():
    """Check the label count, the size and the encoding of a call are bounded (413, 400)."""
    rows_csv = "request_id,label\n" + "r-1,Hernia\n" * (feedback_rows.MAX_LABELS + 1)
    with pytest.raises(RegistryError, match="at most 10000") as caught:
        feedback_rows.parse_labels_file(rows_csv.encode())
    assert caught.value.code == "PAYLOAD_TOO_LARGE"
    with pytest.raises(RegistryError) as caught:
        feedback_rows.parse_labels_file(b"x" * (feedback_rows.MAX_FEEDBACK_BYTES + 1))
    assert caught.value.code == "PAYLOAD_TOO_LARGE"
    with pytest.raises(RegistryError, match="not UTF-8"):
        feedback_rows.parse_labels_file(b"request_id,label\n\xff,x\n")
    body = {"labels": [{"request_id": "r-1", "label": "Hernia"}] * (feedback_rows.MAX_LABELS + 1)}
    with pytest.raises(RegistryError, match="at most 10000"):
        feedback_rows.parse_json_labels(body)
    parsed = feedback_rows.parse_labels_file(
        "\ufeffrequest_id,label,record\nr-1,Hernia,2\n".encode()
    )
    assert parsed == [LabelRow(1, "r-1", "Hernia", 2)]


def test_bridge_feedback_stores_a_file_or_names_each_bad_row(store, bridge, tmp_path):
    """Check ``bridge feedback NAME --data FILE``: exit 1 with one line per bad row and
    nothing stored, then the corrected file stored."""
    bad = tmp_path / "labels.csv"
    bad.write_text("request_id,label\nr-1,Hernia\nr-9,Normal\nr-2,Nope\n")
    refused_run = bridge("feedback", NAME, "--data", str(bad))
    assert refused_run.exit_code == 1
    assert "row 2 (request r-9): request_id has no captured request" in refused_run.output
    assert "row 3 (request r-2): label 'Nope' is not a class" in refused_run.output
    assert store.db[FEEDBACK].count_documents({}) == 0
    good = tmp_path / "labels.json"
    good.write_text(json.dumps({"labels": [{"request_id": "r-1", "label": "Hernia"}]}))
    stored = bridge("feedback", NAME, "--data", str(good), "--json")
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.output)["versions"] == [{"name": NAME, "version": 1, "labels": 1}]
