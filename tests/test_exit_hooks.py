"""A stopping API worker's exit hooks (api/exit_hooks.py): one shared budget, well under
granian's kill timeout, whatever the database and the webhook receivers do."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import throwaway_settings

from api import exit_hooks
from api.__main__ import GRACEFUL_TIMEOUT_S


def test_exit_hooks_run_once_last_first_and_past_a_failure(monkeypatch):
    """Check that the hooks run in reverse order, once, and a failing one stops none."""
    monkeypatch.setattr(exit_hooks, "_hooks", [])
    ran: list[str] = []
    exit_hooks.on_exit(lambda: ran.append("first"))
    exit_hooks.on_exit(lambda: 1 / 0)
    exit_hooks.on_exit(lambda: ran.append("last"))
    exit_hooks.run_exit_hooks()
    exit_hooks.run_exit_hooks()
    assert ran == ["last", "first"]


def test_every_thread_is_signalled_before_any_hook_waits(monkeypatch):
    """Check that each hook's signal runs before the first hook, and the hooks share one
    budget: three threads that each stop 0.3 s after their signal cost ~0.3 s, not 0.9 s,
    and a hook that would wait longer gets only what is left."""
    monkeypatch.setattr(exit_hooks, "_hooks", [])
    waited: list[float] = []
    for _ in range(3):
        stop = threading.Event()
        thread = threading.Thread(target=lambda s=stop: (s.wait(), time.sleep(0.3)))
        thread.start()
        exit_hooks.on_exit(lambda t=thread: t.join(exit_hooks.time_left(5.0)), signal=stop.set)
    exit_hooks.on_exit(lambda: waited.append(exit_hooks.time_left(60.0)))
    started = time.monotonic()
    exit_hooks.run_exit_hooks(budget_s=1.0)
    assert time.monotonic() - started < 0.8
    assert waited and waited[0] <= 1.0
    assert exit_hooks.time_left(7.0) == 7.0  # outside the hooks: the caller's own bound


@pytest.fixture
def silent_database():
    """A TCP port that accepts connections and never answers: a database that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"mongodb://127.0.0.1:{server.getsockname()[1]}/"
    server.close()


def test_a_worker_exits_within_its_budget_while_the_database_hangs(
    silent_database, tmp_path, monkeypatch
):
    """Check that a worker's real hooks (webhook sender, heartbeat, access log) finish within
    EXIT_BUDGET_S, under granian's kill timeout, while each thread is stuck in a database
    call (a CI run saw granian kill a worker that "refused to gracefully stop": the hooks'
    own bounds ran one after another, ~20 s in all against granian's 10)."""
    from api import create_app, observe

    monkeypatch.setattr(exit_hooks, "_hooks", [])
    # A server's app writes the access log from a thread for the rest of its process: this
    # process's later tests read the log as each request ends (a CI run's test_fast_path
    # found no line once this test had run before it in the same xdist worker).
    monkeypatch.setattr(observe, "_lines", None)
    settings = throwaway_settings(silent_database, "exit_budget", tmp_path)
    create_app({"SETTINGS": settings})  # not TESTING: the heartbeat and the sender run
    names = {t.name for t in threading.enumerate()}
    assert {"fleet-heartbeat", "webhook-sender"} <= names
    time.sleep(0.5)  # each thread is inside its first database call by now
    started = time.monotonic()
    exit_hooks.run_exit_hooks()
    took = time.monotonic() - started
    assert exit_hooks.EXIT_BUDGET_S <= GRACEFUL_TIMEOUT_S / 2
    assert took <= exit_hooks.EXIT_BUDGET_S + 0.5, f"exit hooks took {took:.1f} s"
