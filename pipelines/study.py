"""The Optuna study: one MLflow parent run, one nested run per trial, a candidate per family.

Trial runs are written with one ``log_batch`` each (params, metrics, tags together)
because per-call logging to the SQLite store costs more than fitting these small
models. Folds run one after the other so the pruner can stop a clearly bad trial after
any fold.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable

import mlflow
import optuna
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from conf.contract import cv_mean_key
from conf.settings import Settings
from pipelines.candidate import (
    CandidateError,
    Split,
    evaluate,
    log_candidate,
    split_dataset,
    threshold_for,
)
from pipelines.data import Dataset, load_dataset
from pipelines.families import build_pipeline, get_family, search_space
from pipelines.metrics import METRICS, cross_validate, summarise_folds
from pipelines.plots import write_plots
from pipelines.results import Candidate, StudyResult, TrialOutcome
from pipelines.tracking import ensure_experiment, experiment_for

log = logging.getLogger(__name__)

# Prune only trials in the bottom quarter after a fold, once a few trials have finished:
# "clearly bad", not "slightly below the median". (Optuna's percentile counts the kept
# trials from the top when maximising: 75 keeps the top three quarters.)
PRUNE_PERCENTILE = 75.0
PRUNER_STARTUP_TRIALS = 5
MAX_CANDIDATE_ATTEMPTS = 3  # trials per family tried when ONNX parity fails
PLOTS_DIR = "plots"  # artifact directory of the parent run (docs/run-contract.md)


def trial_run_name(number: int, family: str) -> str:
    """A trial's MLflow run name: Optuna's number, the one every line of the CLI shows."""
    return f"trial-{number:03d}-{family}"


class StudyError(RuntimeError):
    """The study ended without a result (e.g. no trial completed before the timeout)."""


def _state(trial: optuna.trial.FrozenTrial) -> str:
    return {
        optuna.trial.TrialState.COMPLETE: "complete",
        optuna.trial.TrialState.PRUNED: "pruned",
    }.get(trial.state, "failed")


class _TrialLogger:
    """Optuna callback: write the trial's nested MLflow run and report progress."""

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        objective: str,
        on_trial: Callable[[TrialOutcome], None] | None,
    ):
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.objective = objective
        self.on_trial = on_trial
        self.outcomes: list[TrialOutcome] = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        family = trial.params.get("model_family", "unknown")
        state = _state(trial)
        cv = dict(trial.user_attrs.get("cv_metrics", {}))
        folds = trial.intermediate_values
        score = trial.value if state == "complete" else (folds[max(folds)] if folds else None)
        duration = trial.duration.total_seconds() if trial.duration else 0.0
        started = trial.datetime_start
        assert started is not None  # Optuna calls back only for trials that ran
        start = int(started.timestamp() * 1000)
        end = int((trial.datetime_complete or started).timestamp() * 1000)
        name = trial_run_name(trial.number, family)
        run = self.client.create_run(
            self.experiment_id,
            start_time=start,
            run_name=name,
            tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id},
        )
        metrics = [Metric(k, v, end, 0) for k, v in cv.items()]
        metrics.append(Metric("duration_seconds", duration, end, 0))
        # The running CV mean after each fold: what the pruner saw, as a curve per run.
        metrics += [
            Metric(f"cv_{self.objective}_running_mean", v, end, step)
            for step, v in sorted(folds.items())
        ]
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        tags = [
            RunTag("run_type", "trial"),
            RunTag("model_family", family),
            RunTag("trial_number", str(trial.number)),
            RunTag("state", state),
            RunTag(MLFLOW_RUN_NAME, name),
        ]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        self.client.set_terminated(
            run.info.run_id, "FAILED" if state == "failed" else "FINISHED", end_time=end
        )
        outcome = TrialOutcome(
            trial.number, family, state, score, duration, run.info.run_id, dict(trial.params), cv
        )
        self.outcomes.append(outcome)
        if self.on_trial is not None:
            self.on_trial(outcome)


def _objective(split: Split, settings: Settings) -> Callable[[optuna.Trial], float]:
    training = settings.training

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("model_family", list(training.families))
        params = get_family(family).suggest(trial)
        pipeline = build_pipeline(family, params, training.seed)

        def on_fold(index: int, scores: list[dict[str, float]]) -> None:
            summary = summarise_folds(scores)
            # Kept on the trial so a pruned trial's run still shows what was measured.
            trial.set_user_attr("cv_metrics", summary)
            trial.report(summary[cv_mean_key(training.objective)], index)
            if trial.should_prune():
                raise optuna.TrialPruned()

        folds = cross_validate(
            pipeline, split.x_train, split.y_train, training.cv_folds, training.seed, on_fold
        )
        return summarise_folds(folds)[cv_mean_key(training.objective)]

    return objective


def _log_study_setup(settings: Settings, dataset: Dataset, split: Split) -> None:
    training = settings.training
    mlflow.set_tags(
        {"run_type": "study", "data_fingerprint": dataset.fingerprint, "variant": dataset.variant}
    )
    mlflow.log_params(
        {
            "split_seed": training.seed,
            "test_size": training.test_size,
            "validation_size": training.validation_size,
            "threshold_rule": training.threshold_rule,
            "cv_folds": training.cv_folds,
            "objective": training.objective,
            "n_trials": training.trials,
            "timeout": training.timeout,
            "families": ",".join(training.families),
            "n_train": len(split.x_train),
            "n_test": len(split.x_test),
            "data_fingerprint": dataset.fingerprint,
        }
    )
    mlflow.log_dict(search_space(training.families), "search_space.json")
    table = pd.concat([dataset.features, dataset.labels], axis=1)
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path "can be
        # interpreted in multiple ways" (both the same class).
        warnings.simplefilter("ignore", UserWarning)
        data_input = from_pandas(
            table,
            source=dataset.source,
            targets="label",
            name=f"vertebral-column-{dataset.variant}",
            digest=dataset.fingerprint[:36],
        )
    mlflow.log_input(data_input, context="training")


def _ranked_by_family(outcomes: list[TrialOutcome]) -> dict[str, list[TrialOutcome]]:
    """Each family's complete trials, best first (ties: earlier trial); best family first."""
    ranked: dict[str, list[TrialOutcome]] = {}
    complete = [o for o in outcomes if o.state == "complete" and o.score is not None]
    for outcome in sorted(complete, key=lambda o: (-o.score, o.number)):  # type: ignore[operator]
        ranked.setdefault(outcome.family, []).append(outcome)
    return ranked


def _make_candidates(
    result: StudyResult,
    settings: Settings,
    on_candidate: Callable[[Candidate], None] | None,
    on_rejected: Callable[[TrialOutcome, CandidateError], None] | None,
) -> None:
    """Refit and log the best convertible trial of each family as a candidate."""
    seed = result.split.seed
    for family, trials in _ranked_by_family(result.trials).items():
        # A trial whose ONNX model fails the parity check stays a FAILED run with a
        # candidate_error tag; the family's next best trial is tried instead.
        for trial in trials[:MAX_CANDIDATE_ATTEMPTS]:
            pipeline = build_pipeline(family, trial.params, seed)
            threshold = threshold_for(pipeline, result.split, result.dataset, settings.training)
            pipeline.fit(result.split.x_train, result.split.y_train)
            try:
                log_candidate(
                    pipeline,
                    family,
                    trial.params,
                    result.split,
                    result.dataset,
                    run_id=trial.run_id,
                    threshold=threshold,
                )
            except CandidateError as exc:
                result.rejected.append((trial, str(exc)))
                if on_rejected is not None:
                    on_rejected(trial, exc)
                continue
            candidate = Candidate(
                family, trial, pipeline, evaluate(pipeline, result.split, threshold)
            )
            result.candidates.append(candidate)
            if on_candidate is not None:
                on_candidate(candidate)
            break
    result.candidates.sort(key=lambda c: (-c.trial.score, c.trial.number))  # type: ignore[operator]
    if not result.candidates:
        reasons = "; ".join(sorted({message for _, message in result.rejected}))
        raise CandidateError(f"no model family gave a candidate that converts to ONNX: {reasons}")


def run_study(
    settings: Settings,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    on_candidate: Callable[[Candidate], None] | None = None,
    on_rejected: Callable[[TrialOutcome, CandidateError], None] | None = None,
) -> StudyResult:
    """Run the whole study and log it; returns what the CLI prints and plots draw.

    Raises:
        DataError: the data set is missing or invalid.
        CandidateError: no family's model passed the ONNX conversion and parity check
            (each failure is named on its run and reported through ``on_rejected``).
        StudyError: no trial completed (e.g. a timeout shorter than one trial).
    """
    training = settings.training
    dataset = load_dataset(settings.data)
    split = split_dataset(dataset, training.test_size, training.seed, training.validation_size)
    experiment = experiment_for(settings.mlflow, dataset.variant)
    experiment_id = ensure_experiment(settings.mlflow, experiment)
    client = MlflowClient(settings.mlflow.tracking_uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    run_name = f"study-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as parent:
        _log_study_setup(settings, dataset, split)
        study = optuna.create_study(
            study_name=run_name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=training.seed),
            pruner=optuna.pruners.PercentilePruner(
                PRUNE_PERCENTILE, n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=1
            ),
        )
        # One trial of each family first, so every family gets a candidate even in
        # short studies; TPE takes over from there.
        for family in training.families:
            study.enqueue_trial({"model_family": family, **get_family(family).defaults()})
        logger = _TrialLogger(
            client, experiment_id, parent.info.run_id, training.objective, on_trial
        )
        study.optimize(
            _objective(split, settings),
            n_trials=training.trials,
            timeout=training.timeout,
            callbacks=[logger],
            gc_after_trial=False,
        )

        result = StudyResult(
            parent.info.run_id,
            experiment_id,
            training.objective,
            dataset,
            split,
            study,
            logger.outcomes,
            experiment=experiment,
        )
        if not result.trials or all(o.state != "complete" for o in result.trials):
            raise StudyError("no trial completed: raise --timeout or --trials")
        _make_candidates(result, settings, on_candidate, on_rejected)

        winner = result.winner
        best_cv = winner.trial.score
        assert best_cv is not None  # the winner is a completed trial, so it has its CV mean
        mlflow.log_params(winner.trial.params)
        mlflow.log_metrics(
            {
                f"best_cv_{training.objective}": best_cv,
                **{k: v for k, v in winner.evaluation.metrics.items()},
                "n_trials_complete": sum(o.state == "complete" for o in result.trials),
                "n_trials_pruned": sum(o.state == "pruned" for o in result.trials),
                "n_onnx_rejected": len(result.rejected),
            }
        )
        mlflow.set_tags(
            {
                "best_run_id": winner.run_id,
                "best_model_family": winner.family,
                "best_trial_number": str(winner.trial.number),
                "candidate_run_ids": json.dumps([c.run_id for c in result.candidates]),
            }
        )
        for path in write_plots(result, training.reports_dir, training.seed):
            mlflow.log_artifact(str(path), PLOTS_DIR)
    return result


__all__ = ["METRICS", "Candidate", "StudyError", "StudyResult", "TrialOutcome", "run_study"]
