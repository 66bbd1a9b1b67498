"""The demo's monitoring step: normal traffic, then a batch with one feature shifted.

The patients are drawn (with replacement, seeded) from the whole data set, so the
normal traffic looks like what the model learned from; the shifted batch is drawn the
same way with ``SHIFTED_FEATURE`` moved by ``SHIFT``. ``bridge monitor`` must flag that
feature and none of the others (tests/test_monitor.py checks it on several seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SHIFTED_FEATURE = "degree_spondylolisthesis"
SHIFT = 40.0
TRAFFIC_ROWS = 300


def patients(features: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """``rows`` patients drawn with replacement from ``features`` (seeded)."""
    rng = np.random.default_rng(seed)
    return features.iloc[rng.integers(0, len(features), rows)].reset_index(drop=True)


def shifted(
    table: pd.DataFrame, feature: str = SHIFTED_FEATURE, shift: float = SHIFT
) -> pd.DataFrame:
    """``table`` with one feature moved by ``shift``."""
    moved = table.copy()
    moved[feature] = moved[feature] + shift
    return moved


def traffic(
    features: pd.DataFrame, seed: int, rows: int = TRAFFIC_ROWS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(normal traffic, shifted batch) of ``rows`` patients each."""
    return patients(features, rows, seed), shifted(patients(features, rows, seed + 1))


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """The patients as a CSV with an id column, ready for /batch-predict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = table.round(4)
    out.insert(0, "patient_id", [f"M{i + 1:04d}" for i in range(len(out))])
    out.to_csv(path, index=False)
    return path
