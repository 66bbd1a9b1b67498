"""The canary: a share of live requests answered by a candidate version, which its
guardrails take back on their own.

State: the pointer document of the name (``registry_state``) carries ``canary: {version,
percent, started_at, started_by}`` beside the active version, so every worker of every
instance reads it with the pointer, under the same lease (registry_bridge/lease.py):
starting or ending a canary is acknowledged, like an activation, only once every request
that starts afterwards sees it. An activation or a rollback replaces the pointer
document and so ends any canary. The store writes it; this module holds the rules.

Routing is sticky: a request goes to the canary when a hash of its key falls in the
canary's share, the key being the client's ``X-Request-Key`` header when given (one
patient, one user: always the same version) or else the request body (the same records
get the same version). Guardrails compare, per worker over a sliding window, the
canary's error rate and p99 latency with the active version's; a breach ends the canary
(an audit entry says which figure, on which worker).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from conf.settings import CanarySettings

# Routing resolution: a share is counted in 1/10,000ths, so 0.01 % steps are honoured.
BUCKETS = 10_000
# The header a client sets to keep its requests on one version.
KEY_HEADER = "X-Request-Key"
MAX_KEY_CHARS = 200


def routes_to_canary(key: bytes | bytearray, percent: float) -> bool:
    """Whether a request with routing ``key`` goes to a canary taking ``percent`` % of them."""
    bucket = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % BUCKETS
    return bucket < round(percent * BUCKETS / 100)


@dataclass(frozen=True)
class WindowFigures:
    """One version's requests in the window: how many, how many failed (5xx), their p99."""

    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def figures(samples: Sequence[tuple[float, bool, float]]) -> WindowFigures:
    """``(time, failed, latency_ms)`` samples as a version's window figures."""
    if not samples:
        return WindowFigures(0, 0, None)
    latencies = sorted(s[2] for s in samples)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return WindowFigures(len(samples), sum(1 for s in samples if s[1]), p99)


def breach(canary: WindowFigures, active: WindowFigures, rules: CanarySettings) -> str | None:
    """Why the canary must end (one line with both versions' figures), or None.

    Judged once the canary has ``min_requests`` in the window; the latency rule also
    needs as many requests of the active version to compare with.
    """
    if canary.requests < rules.min_requests:
        return None
    over = canary.error_rate - active.error_rate
    if over > rules.max_error_rate_increase:
        return (
            f"error rate {canary.error_rate:.1%} ({canary.errors} of {canary.requests}) vs "
            f"{active.error_rate:.1%} on the active version: over the allowed "
            f"+{rules.max_error_rate_increase:.1%}"
        )
    if (
        active.requests >= rules.min_requests
        and canary.p99_ms is not None
        and active.p99_ms
        and canary.p99_ms > rules.max_p99_ratio * active.p99_ms
    ):
        return (
            f"p99 {canary.p99_ms:.1f} ms vs {active.p99_ms:.1f} ms on the active version: "
            f"over {rules.max_p99_ratio:g}x"
        )
    return None


class Window:
    """The recent answers of a name's versions in one worker (appended on the request
    path without a lock: a deque's append is atomic; read by the heartbeat thread)."""

    def __init__(self, seconds: float, max_samples: int = 20_000):
        self.seconds = seconds
        self._samples: dict[int, deque[tuple[float, bool, float]]] = {}
        self._max = max_samples

    def add(self, version: int, now: float, failed: bool, latency_ms: float) -> None:
        samples = self._samples.get(version)
        if samples is None:
            samples = self._samples.setdefault(version, deque(maxlen=self._max))
        samples.append((now, failed, latency_ms))

    def figures(self, version: int, now: float) -> WindowFigures:
        """``version``'s figures over the last ``seconds`` before ``now``."""
        cutoff = now - self.seconds
        samples = self._samples.get(version)
        # copy() is one C call under the GIL: the request threads may append meanwhile.
        recent = [s for s in (samples.copy() if samples else ()) if s[0] >= cutoff]
        return figures(recent)

    def clear(self) -> None:
        self._samples.clear()
