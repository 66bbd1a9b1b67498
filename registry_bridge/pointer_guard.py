"""The pointer names only ready versions: how an activation and a deletion exclude each other.

The pointer (``registry_state``) and a version's status (``model_versions``) live in two
documents, and neither MongoDB without a transaction nor the embedded server can change
both at once. So each side writes its own document first, then reads the other's:

- a deletion marks the version ``deleting`` (a compare-and-set from ``ready``), then reads
  the pointer; if it names the version as active or staged it puts ``ready`` back and
  refuses, else it tombstones the version and removes the file;
- an activation (or rollback) moves the pointer (a compare-and-set on the active version
  it read), then reads the version's status; unless it is still ``ready`` it puts the
  previous pointer back (a compare-and-set on the token it wrote) and refuses, before it
  logs, moves the MLflow alias or acknowledges anything.

Single-document operations are linearizable, so for an activation A and a deletion D of
one version either A read the status before D wrote ``deleting`` (then D's read of the
pointer comes after A's move and D refuses), or A's read comes after that write (then A
sees ``deleting`` or ``deleted`` and undoes its move). Both may refuse; never both succeed.
A file is removed only by a deletion whose read of the pointer came after its mark, and a
pointer only stays on a version whose status read ``ready`` after the pointer moved.

While an activation undoes its move the pointer names the version being deleted for a
moment: a worker reading it then finds no ready version and keeps serving the one it has.
Pure functions here; the store does the reads and writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

READY, DELETING, DELETED = "ready", "deleting", "deleted"
TOKEN = "change"  # field of the pointer document: who wrote it (an activation's undo filter)


def holder(state: Mapping[str, Any] | None, version: int) -> str | None:
    """How the pointer document ``state`` holds ``version``: "active", "staged", "canary"
    (answering a share of requests), "shadow" (scoring a copy of them) or None."""
    if state is None:
        return None
    if state.get("active_version") == version:
        return "active"
    if state.get("staged_version") == version:
        return "staged"
    for side in ("canary", "shadow"):
        if (state.get(side) or {}).get("version") == version:
            return side
    return None


def activation_stands(version_doc: Mapping[str, Any] | None) -> bool:
    """Whether a pointer just moved to the version of ``version_doc`` may stay there."""
    return version_doc is not None and version_doc.get("status") == READY


def restored_state(replaced: Mapping[str, Any]) -> dict[str, Any]:
    """The pointer document an activation puts back: the one it replaced, without the stage
    mark of the version it was activating (that version is being deleted)."""
    return {k: v for k, v in replaced.items() if k != "staged_version"}
