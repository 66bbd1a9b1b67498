"""Point 1: a worker's memory is bounded by the limits, not by what a body holds.

One API worker (``python -m api``) with small limits gets the largest bodies those
limits allow, of the shapes that cost a parser most, plus bodies over the limits. Before
each, the kernel's peak-RSS counter of the worker is reset (``/proc/<pid>/clear_refs``);
after it, ``VmHWM`` in ``/proc/<pid>/status`` is the peak the body caused. The bound:
the worker's resident size before the body + 2 × ``api.max_upload_mb`` + the model.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from api_fixtures import FAMILIES, publish_candidates, record
from conftest import throwaway_settings
from servers import ApiServer

from bench.common import peak_rss_kb, rss_kb
from conf.contract import FEATURES
from registry_bridge.store import ModelStore

AREA = "5 hostile input"
MB = 1024 * 1024
UPLOAD_MB = 48  # /batch-predict
REQUEST_MB = 12  # /predict, /invocations: a quarter of the upload limit (defaults: 16 / 512)
BOUND_MB = 2 * UPLOAD_MB

# Latency, memory and timeouts measured: run alone, after the parallel part (Makefile).
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _reset_peak(pid: int) -> None:
    # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def server(published_module: tuple, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    settings, artifact_bytes = published_module
    tmp = tmp_path_factory.mktemp("memory")
    api = ApiServer(
        settings,
        tmp,
        workers=1,
        config={"api": {"max_upload_mb": UPLOAD_MB, "max_request_mb": REQUEST_MB}},
    )
    with api:
        yield api, artifact_bytes


@pytest.fixture(scope="module")
def published_module(
    mongo_client, mongo_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("memory-db")
    db_name = f"test_{uuid.uuid4().hex[:12]}"
    settings = throwaway_settings(mongo_server.uri, db_name, tmp)
    published = publish_candidates(ModelStore(mongo_client, settings), settings)
    yield settings, len(published.candidates[FAMILIES[0]].artifact)
    mongo_client.drop_database(db_name)


def _padded_json_records(limit: int) -> bytes:
    rows = [record([1.5 + i % 7] * len(FEATURES)) for i in range(10_000)]
    text = json.dumps({"dataframe_records": rows}).encode()
    return text[:-1] + b" " * (limit - len(text) - 16) + b"}"


def _astral_string(limit: int) -> bytes:
    # One 4-byte character makes the whole decoded string 4 bytes per character.
    head = b'{"' + FEATURES[0].encode() + b'": "\xf0\x9f\x98\x80'
    return head + b"a" * (limit - len(head) - 16) + b'"}'


def _padded_csv(limit: int, rows: int = 10_000) -> bytes:
    header = ",".join(FEATURES).encode() + b"\n"
    width = (limit - len(header) - 1024) // (rows * len(FEATURES)) - 1
    cell = b" " * (width - 3) + b"1.5"
    return header + (b",".join([cell] * len(FEATURES)) + b"\n") * rows


def _batch_rows(limit: int) -> bytes:
    header = ",".join(["id", *FEATURES]).encode() + b"\n"
    row = b"P000001,63.0278175,22.55258597,39.60911701,40.47523153,98.67291675,-0.254399986\n"
    return header + row * ((limit - len(header) - 1024) // len(row))


def _pieces(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), MB):
        yield body[start : start + MB]


def bodies() -> list[tuple[str, str, str, bytes, bool, int]]:
    """(name, path, content type, body, chunked, expected status): the largest allowed
    bodies of the costliest shapes, then bodies over the limits."""
    json_type, csv_type = "application/json", "text/csv"
    request_limit, upload_limit = REQUEST_MB * MB, UPLOAD_MB * MB
    return [
        ("/predict: 10,000 records padded to the limit", "/predict", json_type,
         _padded_json_records(request_limit), False, 200),
        ("/predict: one string of the limit, with a 4-byte character", "/predict", json_type,
         _astral_string(request_limit), False, 400),
        ("/invocations: 10,000 CSV rows padded to the limit", "/invocations", csv_type,
         _padded_csv(request_limit), False, 200),
        ("/invocations: one CSV cell of the limit", "/invocations", csv_type,
         ",".join(FEATURES).encode() + b"\n" + b"1," * 5 + b"9" * (request_limit - 1024),
         False, 400),
        ("/batch-predict: CSV rows up to the upload limit", "/batch-predict", csv_type,
         _batch_rows(upload_limit), False, 200),
        ("/batch-predict: the same, chunked", "/batch-predict", csv_type,
         _batch_rows(upload_limit), True, 200),
        ("/batch-predict: the upload limit without a line break", "/batch-predict", csv_type,
         b"a" * (upload_limit - 1024), False, 400),
        ("/invocations: 40 MB chunked (over the limit)", "/invocations", csv_type,
         _padded_csv(40 * MB, rows=100), True, 413),
        ("/batch-predict: 60 MB chunked (over the limit)", "/batch-predict", csv_type,
         _batch_rows(60 * MB), True, 413),
    ]  # fmt: skip


def test_worker_peak_rss_stays_within_the_bound_for_the_largest_bodies(server, figure):
    """Check that for each of the largest bodies the limits allow (and some over them) the
    worker's peak RSS stays under its RSS before the body + 2 x max_upload_mb + the model,
    measured with /proc (VmHWM after resetting it), and each gets the expected status."""
    api, model_bytes = server
    pid = int(requests.get(api.url("/health"), timeout=10).headers["X-Worker-Pid"])
    requests.post(api.url("/predict"), json=record([1.5] * len(FEATURES)), timeout=30)
    bound_kb = BOUND_MB * 1024 + model_bytes // 1024
    problems: list[str] = []
    for name, path, kind, body, chunked, status in bodies():
        _reset_peak(pid)
        before = rss_kb(pid)
        try:
            response = requests.post(
                api.url(path),
                data=_pieces(body) if chunked else body,
                headers={"Content-Type": kind},
                timeout=300,
            )
            got = response.status_code
            if response.headers.get("X-Worker-Pid") != str(pid):
                problems.append(f"{name}: answered by another process than worker {pid}")
        except requests.ConnectionError:
            got = 0  # the server may answer 413 and close before the upload is all sent
        peak = peak_rss_kb(pid)
        extra = (peak - before) / 1024
        figure(f"worker peak RSS over its RSS before: {name} (MB)", round(extra, 1),
               f"<= {BOUND_MB} + model")  # fmt: skip
        if got != status:
            problems.append(f"{name}: status {got}, expected {status}")
        if peak - before > bound_kb:
            problems.append(f"{name}: peak {extra:.0f} MB over the RSS before it")
    assert not problems, "\n".join(problems)
