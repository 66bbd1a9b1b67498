"""Versions and captured requests for the feedback and quality tests, without any model run.

A version is a published draft (tests/registry_samples.py: its ONNX bytes are never
scored here); a captured request is a bucket written by the capture's own writer
(``inference_log.bucket``) holding the decisions the test chooses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from registry_samples import CLASSES, draft

from registry_bridge.monitoring.inference_log import INFERENCE_LOG, Entry, bucket
from registry_bridge.store import ModelStore

NAME = "vertebral-column"
BINARY = "vertebral-column-2c"
BINARY_CLASSES = ["Abnormal", "Normal"]
FEATURES = ["pelvic_incidence", "pelvic_tilt"]


def publish(store: ModelStore, name: str = NAME, **metrics: float) -> int:
    """A 3-class version of ``name`` (or, for BINARY, a 2-class one at threshold 0.4)."""
    extra = {}
    if name == BINARY:
        extra = dict(
            classes=list(BINARY_CLASSES), threshold=0.4, positive_class="Abnormal", variant="2C"
        )
    found, artifact = draft(
        name=name,
        run_id=None,
        metrics={"test_accuracy": 0.8, "test_f1_macro": 0.75, **metrics},
        **extra,
    )
    return store.publish_model_version(found, artifact).version.version


def capture(
    db,
    name: str,
    version: int,
    requests: Sequence[tuple[str, Sequence[str | None]]],
    at: float | None = None,
    classes: Sequence[str] | None = None,
) -> None:
    """One bucket of ``requests``: (request id, the decision of each of its records)."""
    classes = list(classes or (BINARY_CLASSES if name == BINARY else CLASSES))
    t = time.time() if at is None else at
    entries = [
        Entry(
            t,
            "predict",
            rid,
            1.0,
            np.zeros((len(decisions), len(FEATURES))),
            list(decisions),
            np.full((len(decisions), len(classes)), 1.0 / len(classes)),
            None,
        )
        for rid, decisions in requests
    ]
    db[INFERENCE_LOG].insert_one(bucket(name, version, FEATURES, classes, entries))


def pairs_for(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> list[tuple[str, str]]:
    """(label, decision) pairs giving ``matrix`` (rows: the label, columns: the decision)."""
    return [
        (classes[i], classes[j])
        for i, row in enumerate(matrix)
        for j, n in enumerate(row)
        for _ in range(n)
    ]
