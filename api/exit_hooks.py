"""What a worker does as it stops: flush captured records and access lines, leave the fleet.

The same hooks run at interpreter exit (tests, scripts) and when the server stops a worker:
granian's workers are forked processes that end with ``os._exit``, which skips ``atexit``,
so api/front.py runs them when granian stops the worker (RSGI's ``__rsgi_del__``). Each runs
once, last
registered first (as ``atexit`` would).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_hooks: list[Callable[[], object]] = []
_lock = threading.Lock()


def on_exit(hook: Callable[[], object]) -> None:
    """Run ``hook`` (no arguments) when this process's worker stops."""
    with _lock:
        _hooks.append(hook)


def run_exit_hooks() -> None:
    """Run every hook registered so far, once each; a failing one does not stop the rest."""
    while True:
        with _lock:
            if not _hooks:
                return
            hook = _hooks.pop()
        try:
            hook()
        except Exception:
            log.exception("exit hook %r failed", hook)


atexit.register(run_exit_hooks)
