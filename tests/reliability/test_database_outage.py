"""Point 2: the registry database is killed under load and restarted 10 s later."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from api_fixtures import FAMILIES, MODEL, publish_candidates
from conftest import throwaway_settings
from servers import ApiServer, PrivateDatabase

from conf.settings import load_settings
from registry_bridge import database
from registry_bridge.store import ModelStore
from reliability.load import (
    Load,
    activate,
    distinguishing_rows,
    expected_probabilities,
    mismatches,
    percentiles,
    run_for,
)

AREA = "2 database outage"
OUTAGE_SECONDS = 10
TOKEN = "outage-test-admin-token"

pytestmark = pytest.mark.slow


class ReadyProbe:
    """Polls /ready every 0.1 s on a fresh connection (so both workers are asked)."""

    def __init__(self, base: str):
        self.base = base
        self.seen: list[tuple[float, int, float]] = []  # (sent, status, answered)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                status = requests.get(
                    f"{self.base}/ready", timeout=5, headers={"Connection": "close"}
                ).status_code
            except requests.RequestException:
                status = 0
            self.seen.append((at, status, time.monotonic()))
            time.sleep(0.1)

    def start(self) -> ReadyProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def first(self, status: int, after: float) -> float | None:
        return next((at for at, got, _ in self.seen if at > after and got == status), None)


def _registry_state(uri: str, db_name: str) -> tuple[int | None, int]:
    """(active version, number of audit events) read with a client of its own."""
    settings = load_settings(env={"MONGODB_URI": uri, "REGISTRY_DB": db_name})
    client = database.connect(settings.registry)
    try:
        store = ModelStore(client, settings, ensure_indexes=False)
        state = store.get_active_version(MODEL)
        return (state.active_version if state else None), len(store.list_activation_log(MODEL))
    finally:
        client.close()


def test_outage_serves_stale_then_recovers_and_refuses_activation(tmp_path, figure):
    """Check that with the database killed under load no /predict fails (answers are marked
    stale), /ready goes 503 within 2 s and back to 200 within 5 s of the restart, and
    activations tried during the outage are refused with 503 and change nothing."""
    with PrivateDatabase(tmp_path / "db") as db:
        settings = throwaway_settings(db.uri, "outage", tmp_path)
        client = database.connect(settings.registry)
        published = publish_candidates(ModelStore(client, settings), settings)
        client.close()
        expected = expected_probabilities(published)
        v1, v2 = published.versions[FAMILIES[0]], published.versions[FAMILIES[1]]
        with ApiServer(settings, tmp_path, env={"API_ADMIN_TOKEN": TOKEN}) as server:
            load = Load(server.base, published, distinguishing_rows(expected), seed=2).start()
            probe = ReadyProbe(server.base).start()
            flips: list = []
            run_for(
                5,
                lambda: flips.append(
                    activate(server.base, v2 if len(flips) % 2 == 0 else v1, TOKEN)
                ),
                interval=0.4,
            )
            before = _registry_state(db.uri, "outage")

            db.kill()
            killed = time.monotonic()
            refused = []
            while time.monotonic() < killed + OUTAGE_SECONDS:
                other = v1 if before[0] == v2 else v2
                refused.append(activate(server.base, other, TOKEN, reason="during outage"))
                time.sleep(0.3)
            restarting = time.monotonic()
            db.start()
            listening = time.monotonic()

            deadline = time.monotonic() + 30
            while probe.first(200, restarting) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            after = _registry_state(db.uri, "outage")
            # Keep the load and the flips going past the 5 s bound to see it fully recovered.
            run_for(
                listening + 7 - time.monotonic(),
                lambda: flips.append(
                    activate(server.base, v2 if len(flips) % 2 == 0 else v1, TOKEN)
                ),
                interval=0.4,
            )
            probe.stop()
            answers = load.stop()

    down = probe.first(503, killed)
    back = probe.first(200, restarting)
    during = [a for a in answers if killed < a.started and a.ended < restarting]
    failed = [a for a in answers if a.status != 200 or a.error]
    figure("requests served (8 clients, ~20 s, 10 s outage)", len(answers))
    figure("failed requests", len(failed), "= 0")
    figure("answers while down (all marked stale)", len(during))
    for name, value in percentiles([a.ended - a.started for a in during]).items():
        figure(f"latency {name} while down (ms)", value)
    figure("/ready 503 after the kill (s)", (down - killed) if down else "never", "<= 2")
    figure(
        "/ready 200 after the restart command (s)", (back - restarting) if back else "never", "<= 5"
    )
    figure("server restart to listening (s)", listening - restarting)
    figure("activations tried while down (all 503, nothing changed)", len(refused))

    assert not failed, f"{len(failed)} failed requests, first: {failed[0]}"
    assert not mismatches(answers, expected)
    assert during and all(a.stale for a in during), "answers while down must be marked stale"
    recovered = [a for a in answers if a.started > listening + 5]
    assert recovered and not any(a.stale for a in recovered)
    assert down is not None and down - killed <= 2.0
    # Only probes answered before the restart: one in flight may see the database back.
    assert all(
        status == 503 for at, status, answered in probe.seen if down <= at and answered < restarting
    )
    assert back is not None and back - restarting <= 5.0
    assert all(status == 200 for at, status, _ in probe.seen if at > restarting + 5)
    assert refused and all(a.status == 503 for a in refused), [a.status for a in refused]
    assert all(a.body["error"]["code"] == "REGISTRY_UNAVAILABLE" for a in refused)
    assert after == before, "an activation refused during the outage changed the registry"
    assert all(a.status == 200 for a in flips), "activation works again after the restart"
    assert "Traceback" not in server.log()
