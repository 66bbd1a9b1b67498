"""The model store against the suite's registry database: versions, bytes, activation, audit."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from dataclasses import asdict, replace
from datetime import datetime

import gridfs
import pytest
from bson import ObjectId
from conftest import free_port
from pymongo import MongoClient
from registry_samples import draft, file_ids, tamper_first_chunk
from registry_worker import publish_in_process

from conf.settings import load_settings
from registry_bridge import onnx_check
from registry_bridge.errors import RegistryError
from registry_bridge.store import ModelStore

DESIGN_FIELDS = {
    "name",
    "version",
    "created_at",
    "created_by",
    "run_id",
    "experiment_id",
    "source",
    "model_family",
    "params",
    "metrics",
    "classes",
    "input_schema",
    "data_fingerprint",
    "format",
    "artifact_file_id",
    "sha256",
    "size_bytes",
    "library_versions",
    "status",
}


@pytest.fixture
def store(registry_db, settings) -> ModelStore:
    return ModelStore(registry_db, settings)


def publish(store: ModelStore, run_id: str, seed: int = 0, **changes):
    d, artifact = draft(run_id=run_id, seed=seed, **changes)
    return store.publish_model_version(d, artifact)


def test_versions_are_numbered_per_name_and_republish_is_idempotent(store):
    """Check that runs get 1, 2 per name, and a run published again keeps its version."""
    first = publish(store, "run-a")
    second = publish(store, "run-b", seed=1)
    again = publish(store, "run-a")
    other_name = publish(store, "run-a", name="other-model")
    assert (first.version.version, first.created) == (1, True)
    assert (second.version.version, second.created) == (2, True)
    assert (again.version.version, again.created) == (1, False)
    assert other_name.version.version == 1
    d, artifact = draft(run_id="run-a")
    forced = store.publish_model_version(d, artifact, new_version=True)
    assert (forced.version.version, forced.created) == (3, True)
    assert [v.version for v in store.search_model_versions("vertebral-column")] == [1, 2, 3]


def test_version_document_and_gridfs_file_follow_the_design(store, registry_db):
    """Check that the stored document has every DESIGN field and the file its metadata."""
    d, artifact = draft(run_id="run-a")
    version = store.publish_model_version(d, artifact).version
    doc = registry_db.model_versions.find_one({"name": "vertebral-column", "version": 1})
    assert DESIGN_FIELDS <= set(doc)
    assert isinstance(doc["created_at"], datetime) and isinstance(doc["artifact_file_id"], ObjectId)
    assert doc["sha256"] == hashlib.sha256(artifact).hexdigest() == version.sha256
    assert (
        doc["size_bytes"] == len(artifact) and doc["format"] == "onnx" and doc["status"] == "ready"
    )
    assert doc["metrics"] == d.metrics and doc["params"] == d.params
    assert doc["input_schema"][0] == {
        "name": "pelvic_incidence",
        "dtype": "float64",
        "min": -3.0,
        "max": 3.0,
    }
    assert doc["created_by"] == "tester" and doc["library_versions"] == d.library_versions
    grid_file = registry_db["models.files"].find_one({"_id": doc["artifact_file_id"]})
    assert grid_file["filename"] == "vertebral-column-v1.onnx"
    assert grid_file["metadata"] == {
        "name": "vertebral-column",
        "version": 1,
        "run_id": "run-a",
        "sha256": doc["sha256"],
        "format": "onnx",
        "metrics": d.metrics,
    }
    as_json = version.to_dict()
    assert DESIGN_FIELDS <= set(as_json)
    assert as_json["created_at"].endswith("+00:00") and as_json["artifact_file_id"] == str(
        doc["artifact_file_id"]
    )


def test_artifact_bytes_match_their_checksum(store, tmp_path):
    """Check that read_artifact and download_artifact give the published bytes."""
    d, artifact = draft()
    version = store.publish_model_version(d, artifact).version
    assert store.read_artifact(version) == artifact
    path = store.download_artifact(version, tmp_path / "model.onnx")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.sha256


def test_chunks_lost_while_reading_are_not_found_not_an_outage(store, monkeypatch):
    """Check that a file whose chunks vanish mid-read (a delete racing the read) is NOT_FOUND
    naming the version, not REGISTRY_UNAVAILABLE: the database is up, the bytes are gone."""
    d, artifact = draft()
    version = store.publish_model_version(d, artifact).version

    class Vanishing:
        def read(self, size: int) -> bytes:
            raise gridfs.errors.CorruptGridFile("no chunk #0")

    monkeypatch.setattr(store.artifacts, "_open", lambda file_id, what: Vanishing())
    with pytest.raises(RegistryError) as info:
        store.read_artifact(version)
    assert info.value.code == "NOT_FOUND" and version.label in info.value.message


def test_unknown_version_is_named(store):
    """Check that a missing version raises NOT_FOUND naming the model and the version."""
    publish(store, "run-a")
    with pytest.raises(
        RegistryError, match=r"name='vertebral-column' version=7 not found.*1"
    ) as err:
        store.get_model_version("vertebral-column", 7)
    assert err.value.status == 404
    with pytest.raises(RegistryError, match="positive whole number") as err:
        store.get_model_version("vertebral-column", "seven")
    assert err.value.code == "INVALID_INPUT"


def test_activate_rollback_and_history(store):
    """Check that activation moves the pointer, rollback returns, and the log records both."""
    assert store.get_active_version("vertebral-column") is None
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    first = store.set_active_version("vertebral-column", 1, by="alice", reason="first")
    assert (first.active_version, first.previous_version) == (1, None)
    second = store.set_active_version("vertebral-column", 2, by="bob", reason="better")
    assert (second.active_version, second.previous_version) == (2, 1)
    assert store.get_active_version("vertebral-column").active_version == 2
    back = store.rollback("vertebral-column", by="carol", reason="regression")
    assert (back.active_version, back.previous_version) == (1, 2)
    assert isinstance(back.activated_at, datetime) and back.activated_by == "carol"
    same = store.set_active_version("vertebral-column", 1, by="dave")
    assert same.activated_by == "carol"  # already active: nothing changed, nothing logged
    history = [
        (e.action, e.from_version, e.to_version, e.by, e.reason)
        for e in store.list_activation_log("vertebral-column")
    ]
    assert history == [
        ("activate", None, 1, "alice", "first"),
        ("activate", 1, 2, "bob", "better"),
        ("rollback", 2, 1, "carol", "regression"),
    ]
    assert all(isinstance(e.at, datetime) for e in store.list_activation_log("vertebral-column"))


@pytest.mark.parametrize(
    "reason, problem",
    [
        ("ok\r\n2026-01-01 00:00:00  activate  v1  v2  admin  forged", "U+000D at position 2"),
        ("\x1b]0;pwned\x07 title", "U+001B at position 0"),
        ("fix \u202eenilepip", "U+202E at position 4"),
        ("x" * 60_000, "is 60000 characters long; at most 500"),
    ],
)
def test_an_activation_reason_is_short_and_printable(store, reason, problem):
    """Check activate and rollback refuse a reason with a line break, an OSC sequence, a bidi
    override or 60 KB, naming the field; the pointer and the log are unchanged."""
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.set_active_version("vertebral-column", 1, reason="x" * 500)  # the longest allowed
    for call in (
        lambda: store.set_active_version("vertebral-column", 2, reason=reason),
        lambda: store.rollback("vertebral-column", reason=reason),
    ):
        with pytest.raises(RegistryError) as err:
            call()
        assert err.value.code == "INVALID_INPUT" and err.value.message.startswith("reason ")
        assert problem in err.value.message and err.value.details[0]["field"] == "reason"
    assert store.get_active_version("vertebral-column").active_version == 1
    assert len(store.list_activation_log("vertebral-column")) == 1


def test_rollback_without_previous_version_is_refused(store):
    """Check that rollback with nothing to return to is a CONFLICT naming the model."""
    with pytest.raises(RegistryError, match="no version is active"):
        store.rollback("vertebral-column")
    publish(store, "run-a")
    store.set_active_version("vertebral-column", 1)
    with pytest.raises(RegistryError, match="no previous one") as err:
        store.rollback("vertebral-column")
    assert err.value.code == "CONFLICT"


def test_activation_refuses_unknown_and_broken_versions(store):
    """Check that a missing version, bytes that do not load, or a wrong example never go active."""
    with pytest.raises(RegistryError, match="version=1 not found") as err:
        store.set_active_version("vertebral-column", 1)
    assert err.value.code == "NOT_FOUND"
    d, _ = draft(run_id="garbage")
    store.publish_model_version(d, b"these bytes are not an ONNX model")
    with pytest.raises(RegistryError, match="cannot activate vertebral-column v1: .*does not load"):
        store.set_active_version("vertebral-column", 1)
    d, artifact = draft(run_id="liar")
    wrong = dict(
        d.input_example,
        labels=["Normal" if x != "Normal" else "Hernia" for x in d.input_example["labels"]],
    )
    store.publish_model_version(draft(run_id="liar", input_example=wrong)[0], artifact)
    with pytest.raises(
        RegistryError, match=r"cannot activate vertebral-column v2: row 0 .*labelled"
    ):
        store.set_active_version("vertebral-column", 2)
    assert store.get_active_version("vertebral-column") is None
    assert store.list_activation_log("vertebral-column") == []


def test_tampered_chunk_fails_verify_download_and_activation(
    store, registry_db, mongo_server, tmp_path
):
    """Check that changed bytes in GridFS make verify fail and activate refuse."""
    good = publish(store, "run-a").version
    assert store.verify_model_version("vertebral-column", 1).rows_scored == 5
    tamper_first_chunk(registry_db, good.artifact_file_id, mongo_server)
    with pytest.raises(RegistryError, match="checksum mismatch") as err:
        store.verify_model_version("vertebral-column", 1)
    assert err.value.code == "CONFLICT" and good.sha256 in err.value.message
    with pytest.raises(
        RegistryError, match="cannot activate vertebral-column v1: .*checksum mismatch"
    ):
        store.set_active_version("vertebral-column", 1)
    out_dir = tmp_path / "downloads"
    out_dir.mkdir()
    with pytest.raises(RegistryError, match="checksum mismatch while downloading"):
        store.download_artifact(good, out_dir / "out.onnx")
    assert list(out_dir.iterdir()) == []  # neither the file nor a partial one
    assert store.get_active_version("vertebral-column") is None


def test_delete_refuses_the_active_version_and_removes_the_file(store, registry_db):
    """Check that delete keeps the active version, removes another, and never reuses its number."""
    one = publish(store, "run-a").version
    two = publish(store, "run-b", seed=1).version
    store.set_active_version("vertebral-column", 1)
    with pytest.raises(RegistryError, match="v1 is the active version") as err:
        store.delete_model_version("vertebral-column", 1)
    assert err.value.code == "CONFLICT"
    deleted = store.delete_model_version("vertebral-column", 2, by="alice")
    assert deleted.status == "deleted" and deleted.deleted_by == "alice"
    assert [v.version for v in store.search_model_versions()] == [1]
    assert file_ids(registry_db) == {one.artifact_file_id}
    with pytest.raises(RegistryError, match="version=2 was deleted"):
        store.get_model_version("vertebral-column", 2)
    with pytest.raises(gridfs.errors.NoFile):
        gridfs.GridFSBucket(registry_db, "models").open_download_stream(
            ObjectId(two.artifact_file_id)
        )
    assert publish(store, "run-c", seed=2).version.version == 3


def _race(first, second, delays: tuple[float, float]) -> list[str]:
    """Run ``first`` and ``second`` at once, each after its delay: "ok" or each error code."""
    outcomes = ["", ""]
    start = threading.Barrier(2)

    def run(index: int, call) -> None:
        start.wait()
        time.sleep(delays[index])
        try:
            call()
            outcomes[index] = "ok"
        except RegistryError as exc:
            outcomes[index] = exc.code

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _pointer_names_a_verified_version(store: ModelStore) -> int:
    state = store.get_active_version("vertebral-column")
    assert state is not None
    served = store.get_model_version("vertebral-column", state.active_version)  # ready
    assert store.read_artifact(served)  # its bytes are there and match their sha256
    return served.version


@pytest.mark.parametrize("action", ["activate", "rollback"])
def test_activation_racing_a_delete_never_leaves_the_pointer_on_a_deleted_version(
    action, registry_db, settings
):
    """Check activate (or rollback) and delete of one version started together, the delete
    at delays spanning the activation's validation: never both succeed, and afterwards the
    pointer names a ready version whose bytes verify."""
    fast = replace(settings, api=replace(settings.api, pointer_lease_ms=0, prepare_timeout_s=0))
    activating, deleting = ModelStore(registry_db, fast), ModelStore(registry_db, fast)
    name = "vertebral-column"
    keep = publish(activating, "run-keep").version.version
    activating.set_active_version(name, keep)
    sessions: dict[str, object] = {}

    def load(version):  # the rounds' setup moves validate without a new session each time
        if version.sha256 not in sessions:
            data = activating.read_artifact(version)
            sessions[version.sha256] = onnx_check.load_session(data, version.label)
        return sessions[version.sha256]

    # The delays span the time one move takes here, measured, so both orders are reached
    # on a slow machine too: a CI run whose moves took over 40 ms never saw the move win
    # with fixed head starts of -40 to +35 ms.
    probe = publish(activating, "run-probe", seed=3).version.version
    started = time.monotonic()
    activating.set_active_version(name, probe, load=load)
    activating.set_active_version(name, keep, load=load)
    span = max(0.04, 0.75 * (time.monotonic() - started))  # 1.5x one move's time
    seen = set()
    for round_ in range(16):
        target = publish(activating, f"run-{round_}", seed=round_ % 3).version.version
        if action == "rollback":  # target active, then keep: rolling back goes to target
            activating.set_active_version(name, target, load=load)
            activating.set_active_version(name, keep, load=load)
            move = functools.partial(activating.rollback, name)
        else:
            move = functools.partial(activating.set_active_version, name, target)
        # Head starts of -span to +span: the delete well before, during, and well after
        # the activation's validation and move.
        lead = span * (round_ / 7.5 - 1)
        delays = (max(lead, 0.0), max(-lead, 0.0))
        delete = functools.partial(deleting.delete_model_version, name, target)
        outcome = _race(move, delete, delays)
        seen.add(tuple(outcome))
        assert outcome != ["ok", "ok"], f"round {round_}: both succeeded"
        assert set(outcome) <= {"ok", "CONFLICT", "NOT_FOUND"}
        if _pointer_names_a_verified_version(activating) != keep:
            activating.set_active_version(name, keep, load=load)
    # The delays reached both orders: each side won at least once.
    assert any(o[0] == "ok" for o in seen) and any(o[1] == "ok" for o in seen), seen


def test_an_activation_whose_version_is_deleted_before_the_move_is_undone(store, registry_db):
    """Check the activation's half of the guard: a delete landing after the validation (here
    from inside it) makes the activation put the pointer back, log nothing and refuse."""
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.set_active_version("vertebral-column", 1)

    def deleted_meanwhile(version):  # the loader: loads it, then a delete lands
        session = onnx_check.load_session(store.read_artifact(version), version.label)
        store.delete_model_version("vertebral-column", version.version)
        return session

    with pytest.raises(RegistryError, match="cannot activate vertebral-column v2: it was deleted"):
        store.set_active_version("vertebral-column", 2, load=deleted_meanwhile)
    assert store.get_active_version("vertebral-column").active_version == 1
    assert [e.to_version for e in store.list_activation_log("vertebral-column")] == [1]


def test_an_interrupted_delete_is_finished_by_running_it_again(store, registry_db):
    """Check a version left "deleting" (a delete killed after its mark) is hidden, and a second
    delete finishes it: tombstone, file removed."""
    publish(store, "run-a")
    two = publish(store, "run-b", seed=1).version
    registry_db.model_versions.update_one({"version": 2}, {"$set": {"status": "deleting"}})
    with pytest.raises(RegistryError, match="version=2 was deleted"):
        store.get_model_version("vertebral-column", 2)
    # Its delete may still be undone (an activation won the race): gc keeps its file.
    assert store.collect_orphan_files(min_age_s=0) == []
    assert store.delete_model_version("vertebral-column", 2).status == "deleted"
    assert two.artifact_file_id not in file_ids(registry_db)


def test_failed_publish_leaves_no_version_and_no_file(store, registry_db, monkeypatch):
    """Check that a failure after the upload removes the file and shows no version."""

    def insert_fails(doc):
        raise RegistryError("REGISTRY_UNAVAILABLE", "database went away while inserting")

    monkeypatch.setattr(store, "_insert_version", insert_fails)
    d, artifact = draft()
    with pytest.raises(RegistryError, match="went away"):
        store.publish_model_version(d, artifact)
    assert store.search_model_versions(include_deleted=True) == []
    assert registry_db.model_versions.count_documents({}) == 0
    assert file_ids(registry_db) == set()


def test_bytes_changed_on_the_way_are_refused(store, registry_db, monkeypatch):
    """Check that publish re-reads the upload and refuses when GridFS returns other bytes."""
    real_open = store.bucket.open_download_stream

    class Corrupted:
        def __init__(self, stream):
            self.stream = stream

        def read(self, *args):
            return self.stream.read(*args)[::-1]

    monkeypatch.setattr(store.bucket, "open_download_stream", lambda fid: Corrupted(real_open(fid)))
    d, artifact = draft()
    with pytest.raises(RegistryError, match="after upload: GridFS returned different bytes"):
        store.publish_model_version(d, artifact)
    assert registry_db.model_versions.count_documents({}) == 0
    assert file_ids(registry_db) == set()


def test_ten_concurrent_publishes_get_ten_distinct_versions(registry_db, settings):
    """Check that threads publishing at once (each with its own store) never share a number."""
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(10)

    def worker(index: int) -> None:
        store = ModelStore(registry_db, settings)
        d, artifact = draft(run_id=f"run-{index}", seed=index % 3)
        start.wait()
        try:
            results.append(store.publish_model_version(d, artifact).version.version)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(1, 11))
    assert len(file_ids(registry_db)) == 10


def test_concurrent_publishes_of_one_run_make_one_version(registry_db, settings):
    """Check four publishes of one run at once: one version; the others get CONFLICT naming
    it, leave no file behind; a deliberate --new-version and a publish after delete still work."""
    results: list[int] = []
    refusals: list[str] = []
    start = threading.Barrier(4)
    d, artifact = draft(run_id="run-twice")

    def worker() -> None:
        store = ModelStore(registry_db, settings)
        start.wait()
        try:
            results.append(store.publish_model_version(d, artifact).version.version)
        except RegistryError as exc:
            assert exc.code == "CONFLICT"
            refusals.append(exc.message)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = ModelStore(registry_db, settings)
    [only] = store.search_model_versions("vertebral-column")
    assert set(results) == {only.version}  # a publish that saw it first returns it
    for message in refusals:
        assert message == (
            f"run run-twice is already published as vertebral-column v{only.version} "
            "(by a publish that ran at the same time); nothing published"
        )
    assert file_ids(registry_db) == {only.artifact_file_id}
    store.delete_model_version("vertebral-column", only.version)  # gives the key up
    again = store.publish_model_version(d, artifact)
    assert again.created and again.version.version > only.version
    forced = store.publish_model_version(d, artifact, new_version=True)
    assert forced.created and forced.version.version > again.version.version


@pytest.mark.slow
def test_concurrent_publishes_from_processes_get_distinct_versions(
    mongo_server, registry_db_name, registry_db
):
    """Check that ten publishes from five processes at once get ten distinct numbers."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    drafts = [draft(run_id=f"proc-{i}", seed=i % 3) for i in range(10)]
    with ProcessPoolExecutor(5, mp_context=multiprocessing.get_context("spawn")) as pool:
        versions = list(
            pool.map(
                publish_in_process,
                [mongo_server.uri] * 10,
                [registry_db_name] * 10,
                [asdict(d) for d, _ in drafts],
                [artifact for _, artifact in drafts],
            )
        )
    assert sorted(versions) == list(range(1, 11))
    assert len(file_ids(registry_db)) == 10


def test_concurrent_activations_keep_the_log_a_chain(store, registry_db, settings):
    """Check that racing activations each succeed or get CONFLICT, and the log stays consistent."""
    for i in range(4):
        publish(store, f"run-{i}", seed=i % 3)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def worker(version: int) -> None:
        mine = ModelStore(registry_db, settings)
        start.wait()
        try:
            mine.set_active_version("vertebral-column", version)
            outcomes.append("ok")
        except RegistryError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=worker, args=(v,)) for v in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(outcomes) <= {"ok", "CONFLICT"} and "ok" in outcomes
    log = store.list_activation_log("vertebral-column")
    assert len(log) == outcomes.count("ok")
    chain = [None] + [e.to_version for e in log]
    assert [e.from_version for e in log] == chain[:-1]
    assert store.get_active_version("vertebral-column").active_version == log[-1].to_version


def test_gc_removes_only_unreferenced_files(store, registry_db):
    """Check that gc deletes a file no version points to and keeps published ones."""
    kept = publish(store, "run-a").version
    orphan = store.bucket.upload_from_stream(
        "crashed-v9.onnx", b"half a publish", metadata={"name": "crashed", "version": 9}
    )
    assert store.collect_orphan_files() == []  # too young: a publish may still be running
    found = store.collect_orphan_files(dry_run=True, min_age_s=0)
    assert [o["file_id"] for o in found] == [str(orphan)]
    assert file_ids(registry_db) == {kept.artifact_file_id, str(orphan)}
    store.collect_orphan_files(min_age_s=0)
    assert file_ids(registry_db) == {kept.artifact_file_id}
    assert store.read_artifact(kept)


def test_unreachable_database_names_the_masked_uri():
    """Check that a dead server gives REGISTRY_UNAVAILABLE with the password masked."""
    port = free_port()
    uri = f"mongodb://reader:s3cret@127.0.0.1:{port}/"
    settings = load_settings(env={"MONGODB_URI": uri})
    client = MongoClient(uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300)
    with pytest.raises(RegistryError) as err:
        ModelStore(client, settings)
    assert err.value.code == "REGISTRY_UNAVAILABLE"
    assert f"mongodb://reader:***@127.0.0.1:{port}/" in str(err.value)  # for the operator
    assert "s3cret" not in str(err.value)
    assert err.value.message == "cannot reach the registry database"  # for any client


@pytest.mark.needs_real_mongodb(
    reason="nx-27017 ignores writes to <bucket>.chunks (docs/embedded-mongo.md)"
)
def test_chunk_written_through_pymongo_changes_what_gridfs_returns(store, registry_db):
    """Check that on MongoDB a chunk edited as a plain document corrupts the artifact for verify."""
    version = publish(store, "run-a").version
    oid = ObjectId(version.artifact_file_id)
    chunk = registry_db["models.chunks"].find_one({"files_id": oid, "n": 0})
    changed = registry_db["models.chunks"].update_one(
        {"_id": chunk["_id"]},
        {"$set": {"data": bytes([chunk["data"][0] ^ 0xFF]) + chunk["data"][1:]}},
    )
    assert changed.modified_count == 1
    _, original = draft(run_id="run-a")
    assert gridfs.GridFSBucket(registry_db, "models").open_download_stream(oid).read() != original
    with pytest.raises(RegistryError, match="checksum mismatch"):
        store.verify_model_version("vertebral-column", 1)
