"""What every answer carries and leaves behind, for the Flask hook and the fast path alike.

The ``X-Worker-Pid`` and ``X-Model-*`` headers, the request metrics and one line on the
``api.access`` logger. Both ways of answering (``api/__init__.py``'s after-request
hook and ``api/fast.py``) call these, so a request looks the same whichever answered it.

Why it is written for cost: it runs on every request of a worker whose CPU is the
limit. Metric children are looked up once per (endpoint, method, status), not through
``labels()`` each time, and the access-log line is only appended to a deque here: a
thread of the worker builds the JSON and the log records, five times a second.
Building them on the request thread cost ~20 µs per request, and waking a thread per
line ~7 % of a worker's CPU (py-spy).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from api.exit_hooks import on_exit
from api.metrics import LATENCY, PREDICTIONS, REQUESTS, STALE_RESPONSES

access_log = logging.getLogger("api.access")

# Any other method is counted as "other": the label comes from the client, and each new
# value would be a new time series in every worker's metrics file.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
WRITE_EVERY_S = 0.2
MAX_PENDING_LINES = 100_000

_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_predicted: dict[tuple[str, int], Any] = {}
# A deque, not a queue: append takes no lock and wakes no thread; the writer polls.
_lines: deque[tuple[Any, ...]] | None = None
_lines_lock = threading.Lock()
_pid = os.getpid()  # this process's, once: the server forks workers, see _after_fork


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def answer_headers(served: Any) -> list[tuple[str, str]]:
    """``X-Worker-Pid``, and for an answer of a model version ``X-Model-Name``,
    ``X-Model-Version`` and (when the registry could not confirm it) ``X-Model-Stale``."""
    headers = [("X-Worker-Pid", str(_pid))]
    if served is not None:
        headers += [
            ("X-Model-Name", served.model.name),
            ("X-Model-Version", str(served.model.version)),
        ]
        if served.stale:
            headers.append(("X-Model-Stale", "true"))
    return headers


def observe(
    rule: str, method: str, status: int, elapsed: float, served: Any, path: str, remote: Any
) -> None:
    """Count the request, time it, and log its access line (off the request thread)."""
    key = (rule, method if method in METHODS else "other", str(status))
    children = _children.get(key)
    if children is None:
        children = _children[key] = (
            REQUESTS.labels(*key),
            LATENCY.labels(rule, key[2]),
        )
    children[0].inc()
    children[1].observe(elapsed)
    router = None if served is None else served.router
    if router is not None:  # a canary runs: its guardrails compare both versions' answers
        router.window.add(served.model.version, time.monotonic(), status >= 500, elapsed * 1000)
    stale = bool(served is not None and served.stale)
    if stale:
        STALE_RESPONSES.inc()
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = (
        method,
        path,
        status,
        round(elapsed * 1000, 2),
        None if served is None else served.model.version,
        stale,
        _pid,
        remote,
    )
    lines = _lines
    if lines is None:
        _emit(line)  # tests and `flask run`: straight to the logger
    else:
        lines.append(line)


def predicted(model: Any, records: int) -> None:
    """Count ``records`` predictions by ``model`` (a version: the metric's labels)."""
    key = (model.name, model.version)
    child = _predicted.get(key)
    if child is None:
        child = _predicted[key] = PREDICTIONS.labels(model.name, str(model.version))
    child.inc(records)


def _emit(line: tuple[Any, ...]) -> None:
    method, path, status, ms, version, stale, pid, remote = line
    access_log.info(
        json.dumps(
            {
                "method": method,
                "path": path,
                "status": status,
                "ms": ms,
                "model_version": version,
                "stale": stale,
                "pid": pid,
                "remote": remote,
            }
        )
    )


def log_off_the_request_path() -> None:
    """From now on (in this process) access lines are written by one thread of their own."""
    global _lines
    with _lines_lock:
        if _lines is not None:  # create_app called twice in one process
            return
        # Bounded: should the log's stream block, the oldest lines go, not the memory.
        lines: deque[tuple[Any, ...]] = deque(maxlen=MAX_PENDING_LINES)
        threading.Thread(target=_write_lines, args=(lines,), name="access-log", daemon=True).start()
        on_exit(partial(_drain, lines))  # the last lines when the worker exits
        _lines = lines


def _write_lines(lines: deque[tuple[Any, ...]]) -> None:
    while True:
        time.sleep(WRITE_EVERY_S)
        try:
            _drain(lines)
        except Exception:  # a broken handler must not stop the access log for good
            logging.getLogger(__name__).exception("cannot write an access-log line")


def _drain(lines: deque[tuple[Any, ...]]) -> None:
    try:
        while True:
            _emit(lines.popleft())
    except IndexError:  # empty (the writer and the exit hook may drain at once)
        pass
