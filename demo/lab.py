"""The 2-class demo's extra step: the course lab's own model against ours, same test rows.

``python -m demo --variant 2C`` runs the whole flow on the 2-class file with the lab's
80/10/10 split (seed 42), so the study's test rows are the notebook's. This step then
trains the lab's model (``pipelines.lab``: XGBoost ``binary:logistic``, 42 rounds, no
tuning) on the same training rows, and the report sets both side by side at their
thresholds.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from pipelines import lab
from pipelines.metrics import BINARY_METRICS
from pipelines.threshold_plots import binary_figures, roc_comparison
from pipelines.train import format_lab_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from demo.run import DemoRun

# The settings of the 2-class demo: the lab's data and split; every family is searched.
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "3C": {},
    # Its own model name: 2-class versions never sit beside 3-class ones, where a rollback
    # could switch the classes the API answers with.
    "2C": {
        **{k: v for k, v in lab.SETTINGS.items() if k != "training.families"},
        "api.model_name": "vertebral-column-2c",
    },
}
COUNTS = ("tp", "fp", "tn", "fn")


class LabComparisonError(RuntimeError):
    """The lab's model and the study did not score the same test rows."""


def train_lab_model(run: DemoRun) -> lab.LabBaseline:
    """Train and log the lab's model; check its test rows are the study's."""
    baseline = lab.train_lab_baseline(run.settings)
    click.echo(format_lab_report(baseline))
    assert run.study is not None
    if list(baseline.split.x_test.index) != list(run.study.split.x_test.index):
        raise LabComparisonError("the lab's model and the study were tested on different rows")
    winner = run.study.winner
    if winner.evaluation.threshold is None:
        raise LabComparisonError("the study's winner has no decision threshold (not 2C?)")
    click.echo(
        f"\nSame {len(baseline.split.x_test)} test rows — the lab's model against ours "
        f"({winner.family}):"
    )
    for name in BINARY_METRICS:
        key = f"test_{name}"
        click.echo(
            f"  {name:<12} lab {baseline.evaluation.metrics[key]:.4f}   "
            f"ours {winner.evaluation.metrics[key]:.4f}"
        )
    return baseline


def _png(figure: Figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def comparison_rows(run: DemoRun) -> list[tuple[str, str, str]]:
    """(metric, the lab's, ours) on the shared test rows, thresholds and counts included."""
    assert run.study is not None and run.lab is not None
    ours, theirs = run.study.winner.evaluation, run.lab.evaluation
    assert ours.threshold is not None and theirs.threshold is not None
    rows = [
        ("model", "XGBoost, 42 rounds, no tuning", f"{run.study.winner.family}, tuned"),
        (
            "threshold on P(Abnormal)",
            f"{theirs.threshold.value:.4f} ({theirs.threshold.rule})",
            f"{ours.threshold.value:.4f} ({ours.threshold.rule})",
        ),
    ]
    rows += [
        (name, f"{theirs.metrics[f'test_{name}']:.4f}", f"{ours.metrics[f'test_{name}']:.4f}")
        for name in BINARY_METRICS
    ]
    rows += [
        (
            name.upper(),
            f"{theirs.metrics[f'test_{name}']:.0f}",
            f"{ours.metrics[f'test_{name}']:.0f}",
        )
        for name in COUNTS
    ]
    return rows


def comparison_figures(run: DemoRun) -> list[tuple[str, str]]:
    """(caption, base64 PNG): both ROC curves, and the lab model's threshold plots."""
    assert run.study is not None and run.lab is not None
    winner, baseline = run.study.winner, run.lab
    assert winner.evaluation.threshold is not None and baseline.evaluation.threshold is not None
    positive = np.asarray(run.study.split.y_test) == winner.evaluation.threshold.positive_class
    figures = [
        (
            "ROC of both models on the same test rows (dots: each one's threshold)",
            _png(
                roc_comparison(
                    positive,
                    {
                        "the lab's XGBoost": (
                            baseline.evaluation.positive_scores,
                            baseline.evaluation.threshold.value,
                        ),
                        f"ours ({winner.family})": (
                            winner.evaluation.positive_scores,
                            winner.evaluation.threshold.value,
                        ),
                    },
                )
            ),
        )
    ]
    for name, figure in binary_figures(
        positive,
        baseline.evaluation.positive_scores,
        baseline.evaluation.threshold.value,
        "the lab's xgboost",
    ).items():
        figures.append(
            (f"The lab's model: {name.removesuffix('.png').replace('_', ' ')}", _png(figure))
        )
    return figures
