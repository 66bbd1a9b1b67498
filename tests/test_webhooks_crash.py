"""Webhooks across crashes and through the API: a process SIGKILLed between a change and its
delivery loses no event and sends none twice, and an API worker delivers within a second."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_webhooks import NAME, hook_settings, publish
from webhook_receiver import start_receiver

from registry_bridge import webhooks
from registry_bridge.store import ModelStore
from registry_bridge.webhook_sender import Sender

pytestmark = pytest.mark.slow  # starts processes (and the API)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def receiver():
    running = start_receiver()
    yield running
    running.close()


def killed_while(uri: str, db_name: str, code: str) -> None:
    """Run ``code`` in a fresh process with ``store`` and ``sender_settings`` at hand; it
    must die of SIGKILL (the test's patch kills it at the chosen point)."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pymongo import MongoClient
        from conf.settings import RegistrySettings, WebhookSettings
        from registry_bridge import webhook_sender, webhooks
        from registry_bridge.store import ModelStore

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        db = MongoClient({uri!r}, tz_aware=True)[{db_name!r}]
        store = ModelStore(db, RegistrySettings(), ensure_indexes=False)
        sender_settings = WebhookSettings(
            allow_private=True, lease_s=1.0, connect_timeout_s=0.2, read_timeout_s=0.3
        )
        """
    ) + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr


def test_an_activation_killed_before_its_event_was_relayed_loses_nothing(
    settings, registry_db, receiver
):
    """Check a process SIGKILLed right after its activation was written (before the event
    reached webhook_deliveries): the event waits in the pointer, a later activation carries
    it along, a new sender delivers both, each exactly once."""
    hooked = hook_settings(settings)
    store = ModelStore(registry_db, hooked)
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["activate"], "ci")
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.set_active_version(NAME, 1)
    Sender(store.db, hooked.webhooks).deliver_due()
    receiver.wait_for(1)

    killed_while(
        settings.registry.mongodb_uri,
        registry_db.name,
        f"""
        webhooks.relay = die  # the change is written; its relay never happens
        store.set_active_version({NAME!r}, 2, by="killed", reason="crash test")
        """,
    )
    state = registry_db.registry_state.find_one({"_id": NAME})
    assert state["active_version"] == 2
    assert [e["actor"] for e in state[webhooks.OUTBOX]] == ["killed"]
    assert registry_db[webhooks.DELIVERIES].count_documents({}) == 1  # only the first one

    # Before any sender ran, another activation: it carries the waiting event along.
    store.set_active_version(NAME, 1, by="after", reason="back")
    for _ in range(2):  # a second round (and a second relay scan) sends nothing again
        Sender(store.db, hooked.webhooks).deliver_due()
    got = receiver.wait_for(3)
    assert [(r.payload["actor"], r.payload["to_version"]) for r in got[1:]] == [
        ("killed", 2),
        ("after", 1),
    ]
    time.sleep(0.2)
    assert len(receiver.got) == 3


def test_a_sender_killed_holding_a_delivery_leaves_it_to_another_once_its_lease_ends(
    settings, registry_db, receiver
):
    """Check a sender SIGKILLed after claiming a delivery, before POSTing it: no other sender
    takes it during the lease, one does after, and the receiver gets it exactly once."""
    hooked = hook_settings(settings, lease_s=1.0, connect_timeout_s=0.2, read_timeout_s=0.3)
    store = ModelStore(registry_db, hooked)
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["publish"], "ci")
    publish(store, "run-a")
    killed_while(
        settings.registry.mongodb_uri,
        registry_db.name,
        """
        webhook_sender.post = die  # claimed, then killed before the POST
        webhook_sender.Sender(db, sender_settings).deliver_due()
        """,
    )
    claimed = registry_db[webhooks.DELIVERIES].find_one({})
    assert claimed["lease_owner"] and claimed["attempt_count"] == 0
    sender = Sender(store.db, hooked.webhooks)
    assert sender.deliver_due()["delivered"] == 0  # still leased to the dead sender
    deadline = time.monotonic() + 10
    while not receiver.delivered():
        assert time.monotonic() < deadline, "the lease never ended"
        sender.deliver_due()
        time.sleep(0.05)
    sender.deliver_due()
    assert len(receiver.got) == 1
    doc = registry_db[webhooks.DELIVERIES].find_one({})
    assert doc["status"] == "delivered" and doc["attempt_count"] == 1


def test_an_api_worker_delivers_an_event_within_a_second_of_the_acknowledgement(
    settings, registry_db, receiver, tmp_path
):
    """Check the API's workers send (nothing else runs a sender here): each activation made
    by this process reaches the receiver; the goal is <= 1 s, asserted generously."""
    from servers import ApiServer

    hooked = hook_settings(settings)
    store = ModelStore(registry_db, hooked)
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.set_active_version(NAME, 1)
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["activate"], "ci")
    config = {"webhooks": {"allow_private": True}, "mlflow": {"mirror": False}}
    latencies = []
    with ApiServer(settings, tmp_path, workers=2, config=config).start(wait_for="/health"):
        for n in range(6):
            store.set_active_version(NAME, 2 if n % 2 == 0 else 1, reason=f"flip {n}")
            acknowledged = time.time()
            got = receiver.wait_for(n + 1, timeout=10)
            latencies.append(got[-1].at - acknowledged)
    print("event latency after the acknowledgement (s):", [round(x, 3) for x in latencies])
    assert max(latencies) < 3.0, latencies
    ids = [r.headers["X-Registry-Delivery"] for r in receiver.got]
    assert len(ids) == len(set(ids)) == 6
