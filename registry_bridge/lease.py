"""The leased active pointer: how long a worker may reuse a read, and the commit wait.

A worker may serve a request from a read of ``registry_state`` that *began* at most
one lease before the request arrived; every activation and rollback acknowledges only
once the lease has elapsed since the database acknowledged its write. A read that began
before the write therefore expires before the acknowledgement, and a request that
arrives after the acknowledgement is served from a read that began after the write.

The lease in force is the one stored in the pointer document by the activation that
wrote it (``lease_ms``): a worker uses ``min(its own setting, the stored value)`` and
an activation waits ``max(its own setting, the value stored in the document it
replaces)``, so a worker configured longer than the activating CLI cannot break the rule.
Durations are measured with each process's monotonic clock; no two clocks are compared.
The full argument, including write and read concerns on a replica set: docs/api.md.
"""

from __future__ import annotations

import time


def reuse_window_s(configured_ms: int, stored_ms: int) -> float:
    """How long (s) a worker may reuse a read holding ``stored_ms``: the shorter lease."""
    return max(0, min(configured_ms, stored_ms)) / 1000.0


def commit_wait_ms(own_ms: int, replaced_ms: int) -> int:
    """How long an activation waits after its write: the longer of the two leases."""
    return max(0, own_ms, replaced_ms)


def wait_after(acknowledged_at: float, wait_ms: int) -> None:
    """Sleep until ``wait_ms`` have passed since ``acknowledged_at`` (``time.monotonic()``)."""
    remaining = acknowledged_at + wait_ms / 1000.0 - time.monotonic()
    while remaining > 0:
        time.sleep(remaining)
        remaining = acknowledged_at + wait_ms / 1000.0 - time.monotonic()
