"""What a worker does as it stops: flush captured records and access lines, leave the fleet.

The same hooks run at interpreter exit (tests, scripts) and when the server stops a worker:
granian's workers are forked processes that end with ``os._exit``, which skips ``atexit``,
so api/front.py runs them when granian stops the worker (RSGI's ``__rsgi_del__``). Each runs
once, last registered first (as ``atexit`` would).

Every hook shares one deadline, :data:`EXIT_BUDGET_S` from the first: granian kills a
worker that has not exited :data:`api.__main__.GRACEFUL_TIMEOUT_S` after the stop signal
(its requests' drain counts too). Each thread of the worker is told to stop (the ``signal``
given to :func:`on_exit`, which must not block) before any hook waits for one, so the
threads wind down together, and a hook waits at most :func:`time_left`. Before, each hook
had a bound of its own and they ran one after another: the webhook sender's 2 s (its whole
bound whenever a POST was under way), the heartbeat's 5 s and a fleet write, the capture's
3 s, the shadow's 5 s, ~20 s in all against granian's 10.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Seconds all the hooks of a stopping worker share: half of granian's kill timeout.
EXIT_BUDGET_S = 5.0

_hooks: list[tuple[Callable[[], object], Callable[[], object] | None]] = []
_lock = threading.Lock()
_deadline: float | None = None  # while the hooks run: when their budget ends


def on_exit(hook: Callable[[], object], signal: Callable[[], object] | None = None) -> None:
    """Run ``hook`` (no arguments) when this process's worker stops; ``signal`` (no
    arguments, must not block: set an event) first, with every other hook's signal."""
    with _lock:
        _hooks.append((hook, signal))


def time_left(default: float) -> float:
    """What a hook may wait: ``default`` seconds, at most what is left of the budget."""
    deadline = _deadline
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))


def run_exit_hooks(budget_s: float = EXIT_BUDGET_S) -> None:
    """Signal every thread, then run every hook registered so far, once each, within
    ``budget_s`` together; a failing one does not stop the rest."""
    global _deadline
    started = time.monotonic()
    _deadline = started + budget_s
    took: list[tuple[float, str]] = []
    try:
        while True:
            with _lock:
                taken = _hooks[::-1]
                _hooks.clear()
            if not taken:
                break
            for _, signal in taken:
                if signal is not None:
                    _run(signal)
            for hook, _ in taken:
                at = time.monotonic()
                _run(hook)
                took.append((time.monotonic() - at, _name(hook)))
    finally:
        _deadline = None
    if took:
        total = time.monotonic() - started
        slowest = max(took)
        (log.warning if total > budget_s else log.info)(
            "exit hooks took %.2f s (budget %.1f s; slowest %s %.2f s)",
            total,
            budget_s,
            slowest[1],
            slowest[0],
        )


def _run(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:
        log.exception("exit hook %r failed", call)


def _name(hook: Callable[[], object]) -> str:
    func = getattr(hook, "func", hook)  # functools.partial
    return str(getattr(func, "__qualname__", None) or repr(func))


atexit.register(run_exit_hooks)
