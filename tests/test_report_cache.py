"""Monitoring reports and plots: computed once at a time, reused while nothing changed."""

from __future__ import annotations

import threading
import time

import pytest

from api.report_cache import ReportCache
from registry_bridge.errors import RegistryError


def test_sixteen_clients_asking_the_same_report_compute_it_once():
    """Check that concurrent requests for one (version, window) share one computation."""
    cache, calls = ReportCache(), []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return b"png"

    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache.get(("m", 1, "f", 3600), compute)))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [b"png"] * 16 and len(calls) == 1


def test_different_reports_are_computed_one_at_a_time():
    """Check that a worker never runs two computations at once, whatever their keys."""
    cache, running, most = ReportCache(), [0], [0]

    def compute():
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.05)
        running[0] -= 1
        return 1

    threads = [
        threading.Thread(target=cache.get, args=(("m", 1, f"f{i}", 60), compute)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


def test_a_request_that_waited_too_long_gets_busy_503():
    """Check that waiting behind a long computation ends in BUSY (503), not a queue."""
    cache = ReportCache(wait_s=0.1)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.5)
        return 1

    thread = threading.Thread(target=cache.get, args=("a", slow))
    thread.start()
    started.wait()
    with pytest.raises(RegistryError) as info:
        cache.get("b", lambda: 2)
    assert info.value.code == "BUSY" and info.value.status == 503
    thread.join()


def test_a_value_is_recomputed_after_its_ttl_and_errors_are_not_kept():
    """Check the TTL and that a failed computation is tried again next time."""
    now = [0.0]
    cache = ReportCache(ttl_s=30, clock=lambda: now[0])
    assert cache.get("k", lambda: 1) == 1
    now[0] = 29
    assert cache.get("k", lambda: 2) == 1
    now[0] = 31
    assert cache.get("k", lambda: 3) == 3

    def fail():
        raise RegistryError("NOT_FOUND", "no baseline")

    with pytest.raises(RegistryError):
        cache.get("e", fail)
    assert cache.get("e", lambda: 4) == 4
