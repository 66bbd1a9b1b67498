"""Webhooks (issue 25, point 3): every registry change as a signed POST, retried, recorded,
never lost; private targets refused; the documented receiver verifies the signature."""

from __future__ import annotations

import re
import socket
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from registry_samples import draft
from servers import wait_until
from webhook_receiver import start_receiver

from registry_bridge import webhook_targets, webhooks
from registry_bridge.errors import RegistryError
from registry_bridge.store import ModelStore
from registry_bridge.webhook_sender import Sender, signature

ROOT = Path(__file__).resolve().parents[1]
NAME = "vertebral-column"


def hook_settings(settings, **changes):
    """The test's settings with loopback receivers allowed, fast retries and no MLflow mirror."""
    quick = dict(
        allow_private=True,
        backoff_s=0.05,
        connect_timeout_s=0.5,
        read_timeout_s=1.0,
        lease_s=3.0,
        poll_s=0.05,
    )
    return replace(
        settings,
        mlflow=replace(settings.mlflow, mirror=False),
        api=replace(settings.api, prepare_timeout_s=0),
        webhooks=replace(settings.webhooks, **{**quick, **changes}),
    )


@pytest.fixture
def hooked(settings):
    return hook_settings(settings)


@pytest.fixture
def store(registry_db, hooked) -> ModelStore:
    return ModelStore(registry_db, hooked)


@pytest.fixture
def receiver():
    running = start_receiver()
    yield running
    running.close()


def publish(store: ModelStore, run_id: str, seed: int = 0) -> int:
    d, artifact = draft(run_id=run_id, seed=seed)
    return store.publish_model_version(d, artifact).version.version


def deliver_until(sender: Sender, done, timeout: float = 10.0) -> None:
    """Run the sender's rounds until ``done()`` holds (retries come due meanwhile)."""
    wait_until(lambda: sender.deliver_due() is not None and done(), timeout, "delivered", 0.02)


def test_every_change_is_posted_with_its_payload_and_headers(store, hooked, receiver):
    """Check publish, activate, rollback and delete each reach the receiver once, with the
    payload's fields, the headers naming event and delivery, and every attempt recorded."""
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, list(webhooks.EVENTS), "ci")
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.set_active_version(NAME, 1, by="alice", reason="first")
    store.set_active_version(NAME, 2, by="bob", reason="better recall")
    store.rollback(NAME, by="carol", reason="worse live")
    store.delete_model_version(NAME, 2, by="dave")
    Sender(store.db, hooked.webhooks).deliver_due()

    got = receiver.wait_for(6)
    seen = [
        (p["event"], p["model"], p["from_version"], p["to_version"], p["reason"])
        for p in (r.payload for r in got)
    ]
    assert seen == [
        ("publish", NAME, None, 1, None),
        ("publish", NAME, None, 2, None),
        ("activate", NAME, None, 1, "first"),
        ("activate", NAME, 1, 2, "better recall"),
        ("rollback", NAME, 2, 1, "worse live"),
        ("delete", NAME, 2, None, None),
    ]
    assert [r.payload["actor"] for r in got[2:]] == ["alice", "bob", "carol", "dave"]
    for r in got:
        assert r.headers["X-Registry-Event"] == r.payload["event"]
        assert r.headers["X-Registry-Delivery"] == r.payload["delivery_id"]
        assert "X-Registry-Signature" not in r.headers  # no secret: unsigned
        assert datetime.fromisoformat(r.payload["time"].replace("Z", "+00:00"))
    assert got[0].payload["details"]["run_id"] == "run-a"
    assert len({r.payload["delivery_id"] for r in got}) == 6
    assert len({r.payload["event_id"] for r in got}) == 6
    records = list(store.db[webhooks.DELIVERIES].find({}))
    assert {d["status"] for d in records} == {"delivered"}
    attempt = records[0]["attempts"][0]
    assert attempt["status_code"] == 204 and isinstance(attempt["at"], datetime)
    # Relayed: no event waits in the changed documents any more.
    assert all(not d.get("outbox") for d in store.db.model_versions.find({}))
    assert not store.db.registry_state.find_one({"_id": NAME})["outbox"]
    # A second round sends nothing again.
    assert Sender(store.db, hooked.webhooks).deliver_due()["delivered"] == 0
    assert len(receiver.got) == 6


def documented_receiver(monkeypatch, secret: str):
    """The receiver of docs/webhooks.md, executed as written, and what it printed."""
    text = (ROOT / "docs" / "webhooks.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(block.splitlines()) <= 20, "the documented receiver is 20 lines at most"
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    printed: list[str] = []
    namespace = {
        "__name__": "docs_receiver",
        "print": lambda *a: printed.append(" ".join(map(str, a))),
    }
    exec(compile(block, "docs/webhooks.md", "exec"), namespace)
    handler = namespace["Receiver"]
    handler.log_message = lambda *a: None  # keep the test's output quiet
    return namespace, printed


def test_shadow_and_canary_changes_are_posted(store, hooked, receiver):
    """Check the shadow's and the canary's events: start and stop/abort as `shadow` and
    `canary` (with the share, and the action), and a promotion as an `activate`."""
    hooked_events = ["canary", "shadow", "activate"]
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, hooked_events, "ci")
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.set_active_version(NAME, 1, by="alice")
    store.start_shadow(NAME, 2, 100, by="erin")
    store.end_shadow(NAME, by="erin")
    store.start_canary(NAME, 2, 10, by="bob", reason="try b")
    store.end_canary(NAME, by="carol", reason="enough")
    store.start_canary(NAME, 2, 25, by="bob")
    store.promote_canary(NAME, by="dave", reason="b is fine")
    Sender(store.db, hooked.webhooks).deliver_due()
    got = receiver.wait_for(7)
    seen = [
        (p["event"], p["from_version"], p["to_version"], p["actor"], (p.get("details") or {}))
        for p in (r.payload for r in got)
    ]
    assert seen == [
        ("activate", None, 1, "alice", {}),
        ("shadow", 1, 2, "erin", {"action": "shadow-start", "percent": 100.0}),
        ("shadow", 2, 1, "erin", {"action": "shadow-stop"}),
        ("canary", 1, 2, "bob", {"action": "canary-start", "percent": 10.0}),
        ("canary", 2, 1, "carol", {"action": "canary-abort"}),
        ("canary", 1, 2, "bob", {"action": "canary-start", "percent": 25.0}),
        ("activate", 1, 2, "dave", {"action": "canary-promote"}),
    ]


def test_an_element_that_is_not_an_event_does_not_block_the_outbox(store, hooked, receiver):
    """Check a sender relays the events of a pointer whose outbox also holds text (what the
    embedded server made of a document given to $push, which the store no longer uses)."""
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["activate"], "ci")
    event = webhooks.new_event("activate", NAME, 1, 2, "alice", "left by a crash")
    store.state.insert_one(
        {"_id": NAME, "active_version": 2, webhooks.OUTBOX: ['{"id":"x"}', event]}
    )
    assert webhooks.relay_pending(store.db) == 1
    Sender(store.db, hooked.webhooks).deliver_due()
    (got,) = receiver.wait_for(1)
    assert got.payload["reason"] == "left by a crash"


def test_the_documented_receiver_accepts_signed_events_and_refuses_others(
    store, hooked, monkeypatch
):
    """Check the docs' receiver accepts the registry's signature and refuses a wrong or
    missing one (401), and that the secret is stored nowhere."""
    secret = "s3cr3t-for-the-docs-receiver"
    namespace, printed = documented_receiver(monkeypatch, secret)
    docs = start_receiver(namespace["Receiver"])
    try:
        environ = {"HOOK_SECRET": secret, "WRONG_SECRET": "not-the-one"}
        add = webhooks.add_webhook
        add(store.db, hooked.webhooks, docs.url, ["activate"], "signed", "HOOK_SECRET", environ)
        add(store.db, hooked.webhooks, docs.url, ["activate"], "forged", "WRONG_SECRET", environ)
        add(store.db, hooked.webhooks, docs.url, ["activate"], "unsigned", None, environ)
        publish(store, "run-a")
        store.set_active_version(NAME, 1, reason="first")
        Sender(store.db, replace(hooked.webhooks, max_attempts=1), environ).deliver_due()
    finally:
        docs.close()
    answers = {
        d["webhook"]: d["attempts"][-1]["status_code"]
        for d in store.db[webhooks.DELIVERIES].find({})
    }
    assert answers == {"signed": 204, "forged": 401, "unsigned": 401}
    assert len(printed) == 1 and "'event': 'activate'" in printed[0], printed
    stored = str(list(store.db[webhooks.HOOKS].find({}))) + str(
        list(store.db[webhooks.DELIVERIES].find({}))
    )
    assert secret not in stored and "HOOK_SECRET" in stored


def test_a_failing_receiver_is_retried_with_backoff_until_it_recovers(store, hooked, receiver):
    """Check a receiver answering 500 twice gets the event on the third attempt, each
    attempt recorded with its code, the waits growing (backoff_s, then twice it)."""
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["activate"], "flaky")
    receiver.failures = 2
    publish(store, "run-a")
    store.set_active_version(NAME, 1)
    deliver_until(Sender(store.db, hooked.webhooks), lambda: receiver.delivered())
    doc = store.db[webhooks.DELIVERIES].find_one({})
    assert doc["status"] == "delivered"
    assert [a["status_code"] for a in doc["attempts"]] == [500, 500, 204]
    at = [a["at"].timestamp() for a in doc["attempts"]]
    assert at[1] - at[0] >= 0.05 - 0.002 and at[2] - at[1] >= 0.1 - 0.002
    assert len({r.headers["X-Registry-Delivery"] for r in receiver.got}) == 1  # same id


def test_a_dead_receiver_is_given_up_after_max_attempts_and_listed_as_failed(store, hooked):
    """Check a receiver that never answers: each attempt records the error, the delivery is
    failed after max_attempts, and `deliveries --failed` lists it."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    quick = replace(hooked.webhooks, max_attempts=3)
    webhooks.add_webhook(store.db, quick, f"http://127.0.0.1:{port}/", ["publish"], "dead")
    publish(store, "run-a")
    sender = Sender(store.db, quick)
    deliver_until(
        sender, lambda: store.db[webhooks.DELIVERIES].find_one({"status": "failed"}) is not None
    )
    doc = store.db[webhooks.DELIVERIES].find_one({})
    assert doc["attempt_count"] == 3 and all(a["status_code"] is None for a in doc["attempts"])
    assert "refused" in doc["attempts"][0]["error"].lower()
    assert [d["_id"] for d in webhooks.list_deliveries(store.db, failed=True)] == [doc["_id"]]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
    ],
)
def test_private_loopback_and_link_local_targets_are_refused(url):
    """Check every non-public address is refused unless allow_private, naming its kind."""
    with pytest.raises(webhook_targets.TargetRefused, match="address; webhooks go to public"):
        webhook_targets.resolve(url, allow_private=False)
    assert webhook_targets.resolve(url, allow_private=True).addresses


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.org/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pw@example.org/", "credentials"),
        ("http:///nohost", "names no host"),
        ("http://example.org/" + "a" * 2000, "at most 2000"),
        ("http://example.org/a b", "spaces"),
    ],
)
def test_bad_urls_are_refused(url, problem):
    """Check URLs that are not plain http(s) to a host are refused, saying why."""
    with pytest.raises(webhook_targets.TargetRefused, match=problem):
        webhook_targets.resolve(url, allow_private=True)


def test_a_name_rebound_to_loopback_after_it_was_added_is_not_followed(
    store, hooked, receiver, monkeypatch
):
    """Check the address is checked again at send time (DNS rebinding): a host public when
    added and loopback when sending gets no request, and the attempt says why."""
    public = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80))]
    port = int(receiver.url.split(":")[2].split("/")[0])
    loopback = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    answers = iter([public])
    monkeypatch.setattr(
        webhook_targets.socket, "getaddrinfo", lambda *a, **k: next(answers, loopback)
    )
    strict = replace(hooked.webhooks, allow_private=False, max_attempts=1)
    webhooks.add_webhook(store.db, strict, f"http://hooks.example.org:{port}/", ["publish"])
    publish(store, "run-a")
    Sender(store.db, strict).deliver_due()
    doc = store.db[webhooks.DELIVERIES].find_one({})
    assert doc["status"] == "failed" and doc["webhook"] == "hooks.example.org"
    assert doc["attempts"][0]["error"].startswith(
        "refused: hooks.example.org resolves to 127.0.0.1"
    )
    assert receiver.got == []


def test_webhooks_are_bounded_and_checked_when_added(store, hooked, receiver):
    """Check the number of webhooks, their names, events and secret variables are checked."""
    few = replace(hooked.webhooks, max_webhooks=2)
    webhooks.add_webhook(store.db, few, receiver.url, ["publish"], "one")
    with pytest.raises(RegistryError, match="a webhook named 'one' exists"):
        webhooks.add_webhook(store.db, few, receiver.url, ["publish"], "one")
    with pytest.raises(RegistryError, match="must be 1 to 64"):
        webhooks.add_webhook(store.db, few, receiver.url, ["publish"], "bad name")
    with pytest.raises(RegistryError, match="is not set"):
        webhooks.add_webhook(store.db, few, receiver.url, ["publish"], "two", "NOPE_UNSET", {})
    webhooks.add_webhook(store.db, few, receiver.url, ["publish"], "two")
    with pytest.raises(RegistryError, match="already 2 webhooks"):
        webhooks.add_webhook(store.db, few, receiver.url, ["publish"], "three")
    with pytest.raises(RegistryError, match="unknown event 'deploy'"):
        webhooks.parse_events("publish,deploy")
    assert webhooks.parse_events("all") == list(webhooks.EVENTS)


def test_two_senders_never_deliver_one_delivery_twice(store, hooked, receiver):
    """Check concurrent senders split the deliveries between them: each arrives once."""
    import threading

    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["publish"], "ci")
    for n in range(8):
        d, artifact = draft(run_id=f"run-{n}", seed=n % 3)
        store.publish_model_version(d, artifact)
    senders = [Sender(store.db, hooked.webhooks) for _ in range(3)]
    threads = [threading.Thread(target=s.deliver_due) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    receiver.wait_for(8)
    ids = [r.headers["X-Registry-Delivery"] for r in receiver.got]
    assert len(ids) == len(set(ids)) == 8


def test_a_slow_receiver_does_not_delay_the_change(store, hooked):
    """Check an activation returns at once whatever the receiver: sends are not on its path."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            release.wait(5)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sender = Sender(store.db, hooked.webhooks).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        webhooks.add_webhook(store.db, hooked.webhooks, url, ["activate", "publish"], "slow")
        publish(store, "run-a")
        publish(store, "run-b", seed=1)
        started = time.perf_counter()
        store.set_active_version(NAME, 1)
        store.set_active_version(NAME, 2)
        assert time.perf_counter() - started < hooked.webhooks.read_timeout_s
    finally:
        release.set()
        sender.stop()
        server.shutdown()
        server.server_close()


def test_cli_add_list_test_deliveries_remove(bridge, tmp_path, receiver, registry_db):
    """Check the `bridge webhooks` commands end to end, and that the secret is never printed."""
    config = tmp_path / "hooks.yaml"
    config.write_text(
        yaml.safe_dump({"webhooks": {"allow_private": True}, "mlflow": {"mirror": False}})
    )
    secret = "cli-secret-value-123"
    env = {"VERTEBRAL_CONFIG": str(config), "CI_HOOK_SECRET": secret}
    added = bridge(
        "webhooks", "add", receiver.url, "--events", "activate,rollback", "--name", "ci",
        "--secret-env", "CI_HOOK_SECRET", env_changes=env,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "added webhook ci: activate, rollback" in added.output
    listed = bridge("webhooks", "list", env_changes=env)
    assert "ci" in listed.output and "CI_HOOK_SECRET" in listed.output
    as_json = bridge("webhooks", "list", "--json", env_changes=env)
    assert '"secret_env": "CI_HOOK_SECRET"' in as_json.output
    tested = bridge("webhooks", "test", "ci", env_changes=env)
    assert tested.exit_code == 0 and "HTTP 204" in tested.output, tested.output
    got = receiver.wait_for(1)[0]
    assert got.headers["X-Registry-Event"] == "test"
    assert got.headers["X-Registry-Signature"] == signature(secret, got.body)
    shown = bridge("webhooks", "deliveries", env_changes=env)
    assert "ci" in shown.output and "delivered" in shown.output
    assert (
        "no failed delivery" in bridge("webhooks", "deliveries", "--failed", env_changes=env).output
    )
    receiver.failures, receiver.fail_status = 1, 503
    failed = bridge("webhooks", "test", "ci", env_changes=env)
    assert failed.exit_code == 1 and "HTTP 503" in failed.output
    assert len(failed.output.strip().splitlines()) == 1
    listed_failed = bridge("webhooks", "deliveries", "--failed", "--json", env_changes=env)
    assert '"status": "failed"' in listed_failed.output
    delivered = bridge("webhooks", "deliver", env_changes=env)
    assert delivered.exit_code == 0 and "delivered 0" in delivered.output
    removed = bridge("webhooks", "remove", "ci", env_changes=env)
    assert removed.exit_code == 0 and "removed webhook ci" in removed.output
    everything = "".join(
        r.output for r in (added, listed, as_json, tested, shown, failed, listed_failed)
    )
    assert secret not in everything
    assert secret not in str(list(registry_db[webhooks.HOOKS].find({})))


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["add", "http://example.org/", "--events", "deploy"], 2, "unknown event 'deploy'"),
        (["add", "ftp://example.org/", "--events", "publish"], 1, "only http and https"),
        (["add", "http://127.0.0.1:9/", "--events", "publish"], 1, "a loopback address"),
        (["add", "http://169.254.169.254/", "--events", "all"], 1, "a link-local address"),
        (
            ["add", "http://10.0.0.1/", "--events", "publish", "--secret-env", "NOT_SET_HERE"],
            1,
            "a private address",
        ),
        (["remove", "nope"], 1, "no webhook named 'nope'; none is registered"),
        (["test", "nope"], 1, "no webhook named 'nope'"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(bridge, args, code, says):
    """Check each refusal is one line naming the problem, with a non-zero exit."""
    result = bridge("webhooks", *args)
    assert result.exit_code == code, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_refuses_a_missing_secret_variable(bridge, tmp_path, receiver):
    """Check --secret-env naming an unset variable is refused before anything is stored."""
    config = tmp_path / "hooks.yaml"
    config.write_text(yaml.safe_dump({"webhooks": {"allow_private": True}}))
    env = {"VERTEBRAL_CONFIG": str(config)}
    result = bridge(
        "webhooks", "add", receiver.url, "--events", "publish", "--secret-env", "UNSET_VAR_X",
        env_changes=env,
    )  # fmt: skip
    assert result.exit_code == 1 and "UNSET_VAR_X is not set" in result.output
    assert "no webhook registered" in bridge("webhooks", "list", env_changes=env).output


def test_every_webhooks_command_has_help(bridge):
    """Check `bridge webhooks CMD --help` works for each command."""
    for command in ("add", "list", "remove", "test", "deliveries", "deliver"):
        result = bridge("webhooks", command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, command
    assert "deliveries" in bridge("webhooks", "--help").output


def test_bridge_monitor_flagging_drift_emits_a_drift_event(bridge, registry_db, monkeypatch):
    """Check `bridge monitor` exiting 3 on drift writes a drift delivery naming the features."""
    from registry_bridge.monitoring import drift

    registry_db[webhooks.HOOKS].insert_one(
        {"_id": "h1", "name": "alerts", "url": "http://example.org/", "events": ["drift"]}
    )
    report = {
        "name": NAME,
        "version": 3,
        "window": "24h",
        "since": "2026-12-06T00:00:00+00:00",
        "until": "2026-12-07T00:00:00+00:00",
        "drift": True,
        "status": "drift",
        "sample_size": 300,
        "features": [
            {"name": "pelvic_tilt", "drift": False, "ks": 0.05, "psi": 0.01},
            {"name": "degree_spondylolisthesis", "drift": True, "ks": 0.6, "psi": 1.2},
        ],
    }
    monkeypatch.setattr(drift, "drift_report", lambda *a, **k: report)
    monkeypatch.setattr("registry_bridge.render.drift_table", lambda r: "drift table")
    result = bridge("monitor", NAME)
    assert result.exit_code == 3, result.output
    doc = registry_db[webhooks.DELIVERIES].find_one({})
    payload = __import__("json").loads(doc["body"])
    assert (payload["event"], payload["model"], payload["to_version"]) == ("drift", NAME, 3)
    assert payload["details"]["features"] == ["degree_spondylolisthesis"]


def test_the_webhooks_commands_the_docs_show_exist():
    """Check every `bridge webhooks CMD --option` in the README and docs/webhooks.md is real."""
    from click.testing import CliRunner

    from registry_bridge.cli_webhooks import group

    text = (ROOT / "README.md").read_text() + (ROOT / "docs" / "webhooks.md").read_text()
    shown = re.findall(r"bridge webhooks (\w+)([^`\n|]*)", text)
    assert {c for c, _ in shown} >= {"add", "list", "remove", "test", "deliveries", "deliver"}
    for command, rest in shown:
        assert command in group.commands, command
        help_text = CliRunner().invoke(group, [command, "--help"]).output
        for option in re.findall(r"--[a-z-]+", rest):
            assert option in help_text, f"bridge webhooks {command} has no {option}"


def test_events_left_in_version_documents_are_relayed_by_the_next_sender(
    store, hooked, receiver, monkeypatch
):
    """Check a publish and a delete whose relay never ran (the process died after the write)
    leave their events in the version document, where a sender finds and sends each once."""
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["publish", "delete"], "ci")
    relay = webhooks.relay
    monkeypatch.setattr(webhooks, "relay", lambda *a, **k: 0)  # dies right after the write
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    store.delete_model_version(NAME, 2)
    monkeypatch.setattr(webhooks, "relay", relay)
    waiting = [len(d.get("outbox") or []) for d in store.db.model_versions.find({})]
    assert sorted(waiting) == [1, 2]  # v1: its publish; v2: its publish and its delete
    assert store.db[webhooks.DELIVERIES].count_documents({}) == 0
    sender = Sender(store.db, hooked.webhooks)
    sender.deliver_due()
    sender.deliver_due()
    got = receiver.wait_for(3)
    assert sorted(
        (r.payload["event"], r.payload["from_version"] or r.payload["to_version"]) for r in got
    ) == [
        ("delete", 2),
        ("publish", 1),
        ("publish", 2),
    ]
    assert len(receiver.got) == 3
    assert all(not d.get("outbox") for d in store.db.model_versions.find({}))


def test_https_receivers_have_their_certificate_checked(store, hooked, tmp_path, monkeypatch):
    """Check an https receiver gets the event only once its certificate is trusted: the
    sender verifies it against the name (here the address) it connected to."""
    from test_api_exposure import self_signed

    cert, key = self_signed(tmp_path)
    receiver = start_receiver(tls=(cert, key))
    try:
        quick = replace(hooked.webhooks, max_attempts=2)
        webhooks.add_webhook(store.db, quick, receiver.url, ["publish"], "tls")
        publish(store, "run-a")
        sender = Sender(store.db, quick)
        sender.deliver_due()
        first = store.db[webhooks.DELIVERIES].find_one({})["attempts"][0]
        assert "CERTIFICATE_VERIFY_FAILED" in first["error"], first
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now this certificate is trusted
        deliver_until(sender, lambda: receiver.delivered())
        assert receiver.delivered()[0].payload["event"] == "publish"
    finally:
        receiver.close()


def test_a_failed_attempt_logs_and_records_its_reason(store, hooked, receiver, caplog):
    """Check that each failed attempt is logged (WARNING) and recorded with why: the HTTP
    status and reason, or the exception's class and message; never the secret or the
    signature (a CI run logged deliveries at attempts 2, 4 and 5 and no reason for the
    attempts before them)."""
    secret = "s3cret-value-for-the-log-test"
    environ = {"HOOK_SECRET": secret}
    webhooks.add_webhook(
        store.db, hooked.webhooks, receiver.url, ["activate"], "flaky", "HOOK_SECRET", environ
    )
    receiver.failures = 1
    publish(store, "run-a")
    store.set_active_version(NAME, 1)
    sender = Sender(store.db, hooked.webhooks, environ)
    with caplog.at_level("INFO", logger="registry_bridge.webhook_sender"):
        deliver_until(sender, lambda: receiver.delivered())
    doc = store.db[webhooks.DELIVERIES].find_one({})
    assert [a["error"] for a in doc["attempts"]] == ["HTTP 500 Internal Server Error", None]
    failed = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(failed) == 1 and "attempt 1 failed: HTTP 500 Internal Server Error" in (
        failed[0].getMessage()
    )
    assert "retried in" in failed[0].getMessage()
    logged = caplog.text
    assert secret not in logged and "sha256=" not in logged


def test_an_attempt_without_an_answer_names_the_exception():
    """Check that an attempt cut short names the exception's class with its message."""
    from http.client import RemoteDisconnected

    from registry_bridge.webhook_sender import failure

    assert failure(TimeoutError("timed out")) == "TimeoutError: timed out"
    assert failure(RemoteDisconnected("Remote end closed connection without response")) == (
        "RemoteDisconnected: Remote end closed connection without response"
    )
    assert failure(ConnectionResetError()) == "ConnectionResetError"


def test_a_sender_without_the_secret_leaves_the_delivery_to_one_with_it(
    store, hooked, receiver, caplog
):
    """Check that a sender whose process lacks a webhook's secret variable spends no attempt
    on its deliveries and leaves them to one that has it (a clean-clone CI run: `make serve`
    beside `make demo-2c` on one database spent the demo's attempts with "not set here", and
    its receiver got 8 of 9 events in 70 s)."""
    environ = {"HOOK_SECRET": "s3cret-for-the-other-process"}
    webhooks.add_webhook(
        store.db, hooked.webhooks, receiver.url, ["activate"], "signed", "HOOK_SECRET", environ
    )
    webhooks.add_webhook(store.db, hooked.webhooks, receiver.url, ["activate"], "plain", None)
    publish(store, "run-a")
    store.set_active_version(NAME, 1)
    without = Sender(store.db, hooked.webhooks, environ={})
    with caplog.at_level("WARNING", logger="registry_bridge.webhook_sender"):
        assert without.deliver_due() == {"delivered": 1, "retrying": 0, "failed": 0}
        assert without.deliver_due() == {"delivered": 0, "retrying": 0, "failed": 0}
    signed = store.db[webhooks.DELIVERIES].find_one({"webhook": "signed"})
    assert signed["status"] == webhooks.PENDING and signed.get("attempt_count", 0) == 0
    warned = [r.getMessage() for r in caplog.records if "HOOK_SECRET" in r.getMessage()]
    assert warned == [
        "webhook signed: its secret variable HOOK_SECRET is not set in this process; its "
        "deliveries are left to senders that have it"
    ]
    assert Sender(store.db, hooked.webhooks, environ).deliver_due()["delivered"] == 1
    signed = store.db[webhooks.DELIVERIES].find_one({"webhook": "signed"})
    assert signed["status"] == webhooks.DELIVERED and signed["attempt_count"] == 1
