"""Point 3: a publish killed mid-upload and a batch whose client leaves half-way leave nothing."""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from api_fixtures import output_dir
from conftest import ROOT
from registry_samples import draft
from servers import ApiServer

from conf.contract import FEATURES
from registry_bridge.artifacts import artifact_filename
from registry_bridge.store import COUNTERS, VERSIONS, ModelStore

AREA = "3 interrupted writes"
ARTIFACT_MB = 30
BATCH_ROWS = 300_000

pytestmark = pytest.mark.slow

# A separate process publishing a large artifact through the store, as `bridge publish` does.
# With a stage, the process SIGKILLs itself at that point instead of at a random moment.
# The draft's fields come as JSON from the test (registry_samples.draft, seed 11): building
# it here imported sklearn and skl2onnx and fitted a model, 6.5 s of each process's start
# against 1.5 s without (loaded machine, 2026-12-07), before the upload the kill aims at.
PUBLISHER = """
import json, os, signal, sys
from gridfs.synchronous.grid_file import GridIn
from registry_bridge.store import ModelStore
from registry_worker import publish_in_process
uri, db_name, path, stage, fields_path = sys.argv[1:6]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if stage == "chunks-stored":  # GridFS inserts the chunks, then the file document
    def _flush(self):
        self._flush_buffer(force=True)
        die()
    GridIn._flush = _flush
elif stage == "file-stored":  # the store inserts the version document last
    ModelStore._insert_version = die
with open(fields_path) as fields_file:
    fields = json.load(fields_file)
artifact = open(path, "rb").read()
print("uploading", flush=True)
print(publish_in_process(uri, db_name, fields, artifact), flush=True)
"""


def _files_named(store: ModelStore, filename: str) -> list[str]:
    # Listing may stray into other databases on the embedded server: confirm each by _id.
    return [
        str(doc["_id"])
        for doc in store.files.find({}, {"_id": 1, "filename": 1})
        if doc.get("filename") == filename
        and store.files.find_one({"_id": doc["_id"]}, {"_id": 1}) is not None
    ]


def _leftovers(store: ModelStore, server) -> str:
    """What crashed publishes left so far: files no version points to, chunks with no file.

    (The embedded server records chunks that arrive before their file document under an
    auto-created, nameless file document, so there they show up as orphan files.)"""
    files = store.collect_orphan_files(dry_run=True, min_age_s=0)
    return f"{len(files)} orphan file(s), {_orphan_chunks(store, server)} orphan chunk(s) so far"


def _orphan_chunks(store: ModelStore, server) -> int:
    """Chunks with no files document: through the driver, or in the embedded server's file
    (it stores such chunks where the wire protocol cannot reach them)."""
    if server.kind == "embedded":
        path = Path(server.data_dir) / f"{store.db.name}.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM models_chunks WHERE files_id NOT IN "
                "(SELECT id FROM models_files)"
            ).fetchone()[0]
    chunks = store.db[f"{store.settings.bucket}.chunks"]
    return sum(
        1
        for doc in chunks.find({}, {"files_id": 1})
        if store.files.find_one({"_id": doc["files_id"]}, {"_id": 1}) is None
    )


def _publisher(settings, artifact: Path, stage: str = "random") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    fields = artifact.with_name("draft.json")
    fields.write_text(json.dumps(asdict(draft(run_id=None, seed=11)[0])))
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PUBLISHER,
            settings.registry.mongodb_uri,
            settings.registry.database,
            str(artifact),
            stage,
            str(fields),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "uploading"
    return process


def _kill_mid_upload(
    settings, artifact: Path, upload_s: float, rng: random.Random
) -> tuple[float, int]:
    """Start a publishing process and SIGKILL it at a random moment of ``upload_s``."""
    process = _publisher(settings, artifact)
    delay = rng.uniform(0.15, 1.0) * upload_s
    time.sleep(delay)
    process.kill()
    process.wait(timeout=30)
    return delay, process.returncode


def test_killed_publish_leaves_no_version_and_gc_removes_its_bytes(
    settings, mongo_client, mongo_server, tmp_path, figure
):
    """Check that a publish killed while uploading 30 MB leaves no visible version, the next
    publish gets the next number, and `bridge gc` removes what the upload left."""
    store = ModelStore(mongo_client, settings)
    name = "vertebral-column"
    first_draft, _ = draft(run_id=None, seed=10)
    started = time.monotonic()
    first = store.publish_model_version(first_draft, os.urandom(ARTIFACT_MB << 20)).version
    upload_s = time.monotonic() - started  # the same upload, uninterrupted: the kill window

    artifact = tmp_path / "large.bin"
    artifact.write_bytes(os.urandom(ARTIFACT_MB << 20))
    rng = random.Random()
    kills: list[tuple[float, str]] = []
    visible = [first.version]
    window = 0.6
    # A kill may land after the version document was sent (the publish then completed):
    # retry earlier until one lands in the upload itself.
    while len(kills) < 3 and (not kills or kills[-1][1] == "after the commit"):
        delay, code = _kill_mid_upload(settings, artifact, upload_s * window, rng)
        assert code == -9, "the publisher finished before it could be killed"
        taken = store.db[COUNTERS].find_one({"_id": f"{VERSIONS}:{name}"})["seq"]
        doc = store.db[VERSIONS].find_one({"name": name, "version": taken})
        if doc is not None:  # complete or nothing: it must verify
            version = store.get_model_version(name, taken)
            assert len(store.read_artifact(version)) == ARTIFACT_MB << 20
            visible.append(taken)
            kills.append((delay, "after the commit"))
            window /= 2
            continue
        kills.append((delay, f"during the upload: {_leftovers(store, mongo_server)}"))
    killed_version = taken
    # Then at the two points where a crash leaves bytes behind (the process kills itself).
    for stage in ("chunks-stored", "file-stored"):
        process = _publisher(settings, artifact, stage)
        assert process.wait(timeout=120) == -9
        taken = store.db[COUNTERS].find_one({"_id": f"{VERSIONS}:{name}"})["seq"]
        assert store.db[VERSIONS].find_one({"name": name, "version": taken}) is None
        kills.append(
            (-1.0, f"self-kill once {stage.replace('-', ' ')}: {_leftovers(store, mongo_server)}")
        )
        killed_version = taken
    figure("full 30 MB publish (s)", upload_s)
    figure(
        "kills: after (s) -> where it landed",
        "; ".join(f"{d:.2f} s -> {where}" if d >= 0 else where for d, where in kills),
    )
    assert any(where.startswith("during") for _, where in kills)
    assert [v.version for v in store.search_model_versions(name)] == visible
    assert store.db[VERSIONS].find_one({"name": name, "version": killed_version}) is None
    nxt_draft, small = draft(run_id=None, seed=12)
    nxt = store.publish_model_version(nxt_draft, small).version
    figure(
        "versions: visible / taken by the killed publishes / next publish",
        f"{visible} / v{visible[-1] + 1}-v{killed_version} / v{nxt.version}",
    )
    assert nxt.version == killed_version + 1 > first.version
    assert nxt.filename == artifact_filename(name, nxt.version)
    assert [v.version for v in store.search_model_versions(name)] == [*visible, nxt.version]

    bridge = Path(sys.executable).with_name("bridge")
    env = {
        **os.environ,
        "MONGODB_URI": settings.registry.mongodb_uri,
        "REGISTRY_DB": settings.registry.database,
    }
    orphans_before = store.collect_orphan_files(dry_run=True, min_age_s=0)
    assert any(o["filename"] == artifact_filename(name, killed_version) for o in orphans_before)
    gc = subprocess.run(
        [str(bridge), "gc", "--min-age", "0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert gc.returncode == 0, gc.stderr
    after_chunks = _orphan_chunks(store, mongo_server)
    figure("`bridge gc`: orphans removed", gc.stdout.strip().splitlines()[-1])
    after_files = store.collect_orphan_files(dry_run=True, min_age_s=0)
    figure(
        "orphan files / chunks left after `bridge gc`",
        f"{len(after_files)} / {after_chunks}",
        "0 / 0",
    )
    assert _files_named(store, artifact_filename(name, killed_version)) == []
    assert after_files == [] and after_chunks == 0
    # What gc keeps is intact (read_artifact checks the sha256).
    assert len(store.read_artifact(first)) == ARTIFACT_MB << 20
    assert store.read_artifact(nxt) == small


def _big_csv(published) -> bytes:
    rng = np.random.default_rng(3)
    rows = published.inputs[rng.integers(0, len(published.inputs), BATCH_ROWS)]
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    frame.insert(0, "id", np.arange(BATCH_ROWS))
    return frame.to_csv(index=False).encode()


def _leave_half_way(server: ApiServer, out: Path, head: bytes, body: bytes) -> bool:
    """Send the head and half the body, then close; True when a partial result file was seen."""
    seen_partial = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        half = len(body) // 2
        for start in range(0, half, 1 << 20):
            sock.sendall(body[start : min(start + (1 << 20), half)])
            seen_partial |= any(out.glob(".batch-*"))
        deadline = time.monotonic() + 5
        while not seen_partial and time.monotonic() < deadline:
            seen_partial = any(out.glob(".batch-*"))
            time.sleep(0.05)
    return seen_partial


def _wait_for_status(server: ApiServer, count: int, timeout: float = 60) -> list[dict]:
    """The access-log lines of /batch-predict, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [
            json.loads(line[line.index("{") :])
            for line in server.log().splitlines()
            if "api.access" in line and '"/batch-predict"' in line
        ]
        if len(lines) >= count:
            return lines
        time.sleep(0.2)
    raise AssertionError(
        f"the server did not finish {count} batch requests: {server.log()[-2000:]}"
    )


def test_batch_whose_client_leaves_half_way_saves_nothing(published, tmp_path, figure):
    """Check that a /batch-predict upload cut off half-way (CSV body or multipart) leaves
    predicciones.csv as it was and no partial or per-job file."""
    out = output_dir(published.settings)
    body = _big_csv(published)
    with ApiServer(published.settings, tmp_path) as server:
        small = body[:20_000].rsplit(b"\n", 1)[0] + b"\n"
        first = requests.post(
            server.url("/batch-predict"),
            data=small,
            headers={"Content-Type": "text/csv"},
            timeout=60,
        )
        assert first.status_code == 200, first.text[:300]
        before = (out / "predicciones.csv").read_bytes()
        jobs_before = sorted(p.name for p in out.glob("predicciones-*.csv"))

        head = (
            f"POST /batch-predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        partial_csv = _leave_half_way(server, out, head, body)
        boundary = "reliability-boundary"
        multipart = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\n'
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            "POST /batch-predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(multipart)}\r\n\r\n"
        ).encode()
        _leave_half_way(server, out, head, multipart)
        lines = _wait_for_status(server, 3)
        log = server.log()

    statuses = [line["status"] for line in lines[1:]]
    figure(
        "batch uploads cut half-way (CSV body, multipart): answers", statuses, "4xx, nothing saved"
    )
    figure("partial result file seen while the CSV upload ran", partial_csv)
    assert all(400 <= status < 500 for status in statuses), statuses
    assert (out / "predicciones.csv").read_bytes() == before
    assert sorted(p.name for p in out.glob("predicciones-*.csv")) == jobs_before
    assert list(out.glob(".*")) == [], "a temporary file was left behind"
    assert "Traceback" not in log
