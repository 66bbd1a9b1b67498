"""The API as deployed: real worker processes following activations, and a registry outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from api_fixtures import FAMILIES, MODEL, make_app, publish_candidates, record
from conftest import ROOT, data_path
from servers import ApiServer, PrivateDatabase, wait_until

from conf.settings import load_settings
from registry_bridge import database
from registry_bridge.store import ModelStore

pytestmark = pytest.mark.slow


def _until_both_workers(base: str, body: dict, each: int = 1) -> dict[str, list[requests.Response]]:
    """Send requests until both workers answered ``each`` times (bounded); answers by pid."""
    answers: dict[str, list[requests.Response]] = {}
    for _ in range(400):
        answer = _predict(base, body)
        answers.setdefault(answer.headers["X-Worker-Pid"], []).append(answer)
        if len(answers) == 2 and min(map(len, answers.values())) >= each:
            break
    assert len(answers) == 2, f"requests reached only workers {sorted(answers)}"
    return answers


def _predict(base: str, body: dict) -> requests.Response:
    # A new connection per request, so the kernel hands requests to both workers.
    return requests.post(f"{base}/predict", json=body, timeout=10, headers={"Connection": "close"})


def test_every_worker_serves_the_new_version_after_activate(published, tmp_path):
    """Check that after POST /models/activate returns, every request on both workers uses it."""
    settings = published.settings
    v1, v2 = published.versions[FAMILIES[0]], published.versions[FAMILIES[1]]
    body = {"records": [record(r) for r in published.inputs[:5]]}
    with ApiServer(settings, tmp_path) as server:
        base = server.base
        seen = _until_both_workers(base, body, each=5)
        assert all(
            a.status_code == 200 and a.json()["model"]["version"] == v1
            for answers in seen.values()
            for a in answers
        )

        # Background load across the switch: nothing may fail, nothing may go back to v1
        # once the activation has returned.
        results: list[tuple[float, float, int, int]] = []  # started, finished, status, version
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    answer = _predict(base, body)
                    status = answer.status_code
                    version = answer.json()["model"]["version"] if answer.ok else -1
                except requests.RequestException:  # counted as a failure, never lost
                    status, version = -1, -1
                results.append((started, time.monotonic(), status, version))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        asked = time.monotonic()
        activated = requests.post(
            f"{base}/models/activate",
            timeout=30,
            json={"name": MODEL, "version": v2, "reason": "switch test"},
        )
        returned = time.monotonic()
        assert activated.status_code == 200, activated.text
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        assert results and all(status == 200 for _, _, status, _ in results)
        assert {version for _, finished, _, version in results if finished < asked} == {v1}
        later = [version for started, _, _, version in results if started > returned]
        assert later and set(later) == {v2}

        after = _until_both_workers(base, body, each=10)
        assert set(after) == set(seen), "the same two workers answered after the switch"
        assert all(
            a.status_code == 200
            and a.headers["X-Model-Version"] == str(v2)
            and a.json()["model"]["version"] == v2
            for answers in after.values()
            for a in answers
        )
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert f'api_predictions_total{{model="{MODEL}",version="{v2}"}}' in metrics


def _ready_by_worker(base: str) -> dict[str, int]:
    """/ready's status as each of the two workers answers it."""
    statuses: dict[str, int] = {}
    for _ in range(200):
        answer = requests.get(f"{base}/ready", timeout=10, headers={"Connection": "close"})
        statuses[answer.headers["X-Worker-Pid"]] = answer.status_code
        if len(statuses) == 2:
            break
    assert len(statuses) == 2
    return statuses


def test_registry_outage_serves_stale_and_ready_recovers(tmp_path):
    """Check that with the database stopped both workers keep predicting, marked stale, /ready
    is 503 until it is back, and an API with nothing loaded answers 503 REGISTRY_UNAVAILABLE."""
    with PrivateDatabase(tmp_path / "db") as db:
        settings = load_settings(
            env={
                "MONGODB_URI": db.uri,
                "REGISTRY_DB": "outage",
                "VERTEBRAL_DATA": str(data_path()),
                "OUTPUT_DIR": str(tmp_path / "out"),
            }
        )
        settings = replace(settings, registry=replace(settings.registry, timeout_ms=500))
        store = ModelStore(database.connect(settings.registry), settings)
        published = publish_candidates(store, settings)
        v1 = published.versions[FAMILIES[0]]
        body = {"records": [record(r) for r in published.inputs[:3]]}
        with ApiServer(settings, tmp_path) as server:
            base = server.base
            fresh = _until_both_workers(base, body)
            first = next(iter(fresh.values()))[0]
            assert first.status_code == 200 and "X-Model-Stale" not in first.headers

            db.stop()
            outage = _until_both_workers(base, body, each=5)
            for answer in (a for answers in outage.values() for a in answers):
                assert answer.status_code == 200
                assert answer.elapsed.total_seconds() < 2.0  # never the 3 s server-selection wait
                assert answer.headers["X-Model-Stale"] == "true"
                assert answer.json()["model"]["version"] == v1
                assert answer.json()["predictions"] == first.json()["predictions"]
            assert set(_ready_by_worker(base).values()) == {503}
            down = requests.get(f"{base}/ready", timeout=10).json()
            assert down["error"]["code"] == "REGISTRY_UNAVAILABLE"
            empty = make_app(settings).test_client().post("/predict", json=body)
            assert empty.status_code == 503
            assert empty.json["error"]["code"] == "REGISTRY_UNAVAILABLE"

            db.start()
            wait_until(
                lambda: set(_ready_by_worker(base).values()) == {200},
                20,
                "/ready did not recover on both workers",
            )
            back = _until_both_workers(base, body, each=2)
            assert all(
                a.status_code == 200 and "X-Model-Stale" not in a.headers
                for answers in back.values()
                for a in answers
            )


def _workers(master: int) -> set[int]:
    """The server's live worker processes."""
    kids: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        try:
            kids |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread of the master ended while listed (a CI run)
            continue
    return kids


def _answered_by(base: str, body: dict, pids: set[int], timeout: float) -> float:
    """Seconds until a /predict is answered 200 by one of ``pids`` (AssertionError after
    ``timeout``): the API answers again, from a worker started after the signal."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            answer = _predict(base, body)
            if answer.status_code == 200 and int(answer.headers["X-Worker-Pid"]) in pids:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no /predict answered by workers {sorted(pids)} within {timeout} s")


def _replaced(master: int, gone: set[int], count: int, timeout: float = 5.0) -> set[int]:
    """The workers once every pid of ``gone`` was replaced and ``count`` are running."""
    wait_until(
        lambda: not (_workers(master) & gone) and len(_workers(master)) == count,
        timeout,
        f"workers {sorted(gone)} not replaced",
        interval=0.05,
    )
    return _workers(master)


# granian stops the whole server when a worker dies within 5.5 s of its (re)start: a
# crash loop (a worker that cannot boot) is not retried for ever. A process manager then
# restarts the API. The signals below are spaced past that window.
CRASH_LOOP_S = 5.5


def _past_crash_loop_window(started: float) -> None:
    time.sleep(max(0.0, started + CRASH_LOOP_S + 0.5 - time.monotonic()))


# A worker granian stops gracefully closes, unanswered, a connection it had accepted but
# not read yet (hyper's graceful shutdown takes it for idle: granian src/workers.rs): a
# request arriving at that instant sees "connection closed without response", which a
# client may retry. Each client thread below holds one connection at a time, so a stopping
# worker can hold at most one such connection per thread: that is the bound (HUP stops two
# workers, TERM one), and never an error answer. Seen 0 or 1 time per run alone (eleven
# runs), 4 once in a loaded clean-clone CI run (2026-12-07), 3 in six stops in another.
STOPPED_WORKERS = 3
CLIENT_THREADS = 3
CLOSED_UNANSWERED = "RemoteDisconnected"


def test_workers_come_and_go_and_the_api_stays(published, tmp_path):
    """Check that after HUP to the master, TERM to one worker and KILL of another, /predict
    is answered by a new worker within 5 s each time, and every request sent during the
    graceful ones (HUP's reload, TERM) is answered 200, but for at most one connection per
    client thread and stopped worker closed before it was read (issue 21, item 1: each
    exiting worker removed the metrics directory, and the next ones failed to boot)."""
    body = {"records": [record(r) for r in published.inputs[:3]]}
    with ApiServer(published.settings, tmp_path) as server:
        assert server.process is not None
        master, base = server.process.pid, server.base
        _until_both_workers(base, body)
        results: list[int] = []
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    answer = _predict(base, body)
                    results.append(answer.status_code)
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code}: {answer.text[:200]}")
                except requests.RequestException as exc:  # counted as a failure, never lost
                    results.append(-1)
                    failures.append(repr(exc)[:300])

        threads = [threading.Thread(target=hammer) for _ in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        try:
            timings = {}
            before = _workers(master)
            os.kill(master, signal.SIGHUP)  # graceful reload: every worker replaced
            after = _replaced(master, before, 2, timeout=10)
            timings["HUP"] = _answered_by(base, body, after, 5)
            _past_crash_loop_window(replaced_at := time.monotonic())
            victim = min(after)
            os.kill(victim, signal.SIGTERM)  # one worker stops gracefully
            replacement = _replaced(master, {victim}, 2) - after
            replaced_at = time.monotonic()
            timings["TERM"] = _answered_by(base, body, replacement, 5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        graceful = list(results)
        _past_crash_loop_window(replaced_at)
        victim = min(_workers(master))
        os.kill(victim, signal.SIGKILL)  # as the OOM killer would: its requests are lost
        survivors = _workers(master) - {victim}
        replacement = _replaced(master, {victim}, 2) - survivors
        timings["KILL"] = _answered_by(base, body, replacement, 5)
        metrics = requests.get(f"{base}/metrics", timeout=5)
        log = server.log()
    unanswered = [f for f in failures if CLOSED_UNANSWERED in f]
    failed = [f for f in failures if CLOSED_UNANSWERED not in f]
    assert graceful and not failed, (
        f"{len(failed)} of {len(graceful)} failed during HUP and TERM: {failed[:3]}"
    )
    assert len(unanswered) <= STOPPED_WORKERS * CLIENT_THREADS, unanswered
    assert all(seconds <= 5 for seconds in timings.values()), timings
    assert metrics.status_code == 200 and "api_predictions_total" in metrics.text
    assert "Worker failed to boot" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("fault", ["garbage certificate", "garbage key", "mismatched key"])
def test_a_tls_pair_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, fault):
    """Check that a garbage certificate or key, or a key of another certificate, stops
    `python -m api` with one line naming the setting and exit 2 (issue 21, item 21: each
    worker printed a traceback and the server exited 255)."""
    from test_api_exposure import self_signed

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, key = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    pair, setting = {
        "garbage certificate": ((garbage, key), "api.tls_cert"),
        "garbage key": ((cert, garbage), "api.tls_key"),
        "mismatched key": ((cert, other_key), "api.tls_key"),
    }[fault]
    config = tmp_path / "api.yaml"
    config.write_text(f"api:\n  tls_cert: {pair[0]}\n  tls_key: {pair[1]}\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("API_")}
    result = subprocess.run(
        [sys.executable, "-m", "api", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {setting}")
    assert "Traceback" not in result.stderr
