"""What a finished study holds: its trials, the best candidate of each family, the winner.

Its own module so that the study (which fills it in) and the plots (which draw it) both
import it, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from sklearn.pipeline import Pipeline

from pipelines.candidate import Evaluation, Split
from pipelines.data import Dataset


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial as the progress line and the tables show it."""

    number: int
    family: str
    state: str  # "complete", "pruned" or "failed"
    score: float | None  # the objective: CV mean, or the last fold mean when pruned
    duration: float
    run_id: str
    params: dict[str, Any]
    cv_metrics: dict[str, float]


@dataclass(frozen=True)
class Candidate:
    """The best trial of one family, refit on the whole training split and evaluated."""

    family: str
    trial: TrialOutcome
    pipeline: Pipeline
    evaluation: Evaluation

    @property
    def run_id(self) -> str:
        return self.trial.run_id


@dataclass
class StudyResult:
    """Everything the CLI prints and the plots draw."""

    parent_run_id: str
    experiment_id: str
    objective: str
    dataset: Dataset
    split: Split
    study: optuna.Study
    trials: list[TrialOutcome] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)  # best first
    rejected: list[tuple[TrialOutcome, str]] = field(default_factory=list)  # ONNX failures
    experiment: str = ""  # the experiment's name (a 2-class study's own, see experiment_for)

    @property
    def winner(self) -> Candidate:
        return self.candidates[0]
