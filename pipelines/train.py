"""``python -m pipelines.train``: run the Optuna study tracked in MLflow and report it.

Prints one line per trial, then the best trial of each model family, the winner's
test metrics, the parent run id and how to open the MLflow UI. Errors a user can fix
(bad settings, bad data, a model that does not convert) end with a one-line message
and exit code 1.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from conf.contract import cv_mean_key, cv_std_key
from conf.settings import Settings, SettingsError, load_settings
from pipelines import lab
from pipelines.candidate import CandidateError, Evaluation
from pipelines.data import DataError
from pipelines.metrics import BINARY_METRICS, METRICS
from pipelines.results import Candidate, StudyResult, TrialOutcome
from pipelines.study import StudyError, run_study

log = logging.getLogger("pipelines.train")


def settings_from_options(
    config: str | None,
    trials: int | None,
    timeout: float | None,
    seed: int | None,
    experiment: str | None,
    data: str | None,
    families: str | None,
    preset: str | None = None,
    variant: str | None = None,
) -> Settings:
    """The settings with the preset's, then the command line's options on top (None: keep)."""
    given = {
        "training.trials": trials,
        "training.timeout": timeout,
        "training.seed": seed,
        "mlflow.experiment": experiment,
        "data.path": data,
        "data.variant": variant,
        "training.families": families,
    }
    preset_settings = lab.SETTINGS if preset == lab.PRESET else {}
    return load_settings(
        config,
        overrides={**preset_settings, **{k: v for k, v in given.items() if v is not None}},
    )


class ProgressPrinter:
    """Print one line per trial: number, family, score, state, duration."""

    def __init__(self, total: int, objective: str):
        self.total = total
        self.objective = objective
        self.width = len(str(total))

    def __call__(self, outcome: TrialOutcome) -> None:
        score = "   —  " if outcome.score is None else f"{outcome.score:.4f}"
        click.echo(
            # Optuna's number, as the best-trial table and the run name trial-NNN show it;
            # the count of trials done follows in brackets.
            f"trial {outcome.number:>{self.width}} ({outcome.number + 1}/{self.total})  "
            f"{outcome.family:<19} {self.objective} {score}  "
            f"{outcome.state:<8} {outcome.duration:5.1f}s"
        )


def candidate_printer(objective: str) -> Callable[[Candidate], None]:
    """Print one line per logged candidate: family, test score, run id."""

    def echo(candidate: Candidate) -> None:
        score = candidate.evaluation.metrics[f"test_{objective}"]
        click.echo(
            f"candidate {candidate.family:<19} test {objective} {score:.4f}  run {candidate.run_id}"
        )

    return echo


def format_report(result: StudyResult, elapsed: float) -> str:
    """The end-of-study summary: best trial per family, winner's test metrics, next steps."""
    objective = result.objective
    counts = {
        state: sum(t.state == state for t in result.trials)
        for state in ("complete", "pruned", "failed")
    }
    lines = [
        "",
        f"Study finished in {elapsed:.1f}s: {len(result.trials)} trials "
        f"({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed)",
        "",
        "Best trial per model family (ranked by CV " + objective + "):",
        f"  {'rank':<5}{'family':<20}{'trial':>6}  {'cv mean':>8} {'cv std':>7}  "
        f"{'test':>7}  run id",
    ]
    for rank, candidate in enumerate(result.candidates, start=1):
        cv = candidate.trial.cv_metrics
        lines.append(
            f"  {rank:<5}{candidate.family:<20}{candidate.trial.number:>6}  "
            f"{cv[cv_mean_key(objective)]:>8.4f} {cv[cv_std_key(objective)]:>7.4f}  "
            f"{candidate.evaluation.metrics[f'test_{objective}']:>7.4f}  "
            f"{candidate.run_id}"
        )
    for trial, message in result.rejected:
        lines.append(f"  not a candidate: trial {trial.number} ({message})")
    winner = result.winner
    lines += [
        "",
        f"Winner: {winner.family} (trial {winner.trial.number})  "
        f"params: "
        + ", ".join(f"{k}={v}" for k, v in winner.trial.params.items() if k != "model_family"),
        f"Test split ({len(result.split.x_test)} rows):",
    ]
    lines += [f"  {name:<18} {winner.evaluation.metrics[f'test_{name}']:.4f}" for name in METRICS]
    lines.append("  per class          precision  recall  f1")
    for cls in winner.evaluation.classes:
        m = winner.evaluation.metrics
        lines.append(
            f"  {cls:<18} {m[f'test_precision_{cls}']:>9.4f} "
            f"{m[f'test_recall_{cls}']:>7.4f} {m[f'test_f1_{cls}']:>6.4f}"
        )
    lines += binary_lines(winner.evaluation)
    lines += [
        "",
        f"Parent run: {result.parent_run_id} (experiment {result.experiment!r})",
        f"Winner run: {winner.run_id}",
        "Open the MLflow UI:  make mlflow-ui   (http://127.0.0.1:5000)",
    ]
    return "\n".join(lines)


def binary_lines(evaluation: Evaluation) -> list[str]:
    """The lab's metrics at a binary model's threshold (nothing for a 3-class model)."""
    threshold = evaluation.threshold
    if threshold is None:
        return []
    m = evaluation.metrics
    lines = [
        f"  at threshold {threshold.value:.4f} on P({threshold.positive_class}) "
        f"(rule {threshold.rule}, chosen on the CV folds):",
        f"  confusion          TP {m['test_tp']:.0f}  FP {m['test_fp']:.0f}  "
        f"TN {m['test_tn']:.0f}  FN {m['test_fn']:.0f}",
    ]
    lines += [f"  {name:<18} {m[f'test_{name}']:.4f}" for name in BINARY_METRICS]
    return lines


def format_lab_report(baseline: lab.LabBaseline) -> str:
    """What ``--preset aws-lab`` prints: the lab's set-up and its test metrics."""
    split = baseline.split
    lines = [
        f"The lab's model (preset {lab.PRESET}): XGBoost binary:logistic, "
        f"{lab.PARAMS['xgb_n_estimators']} rounds, no tuning, in {baseline.seconds:.1f}s",
        f"Data: {baseline.dataset.source} ({baseline.dataset.variant}); split "
        f"{len(split.x_train)} train / {0 if split.x_val is None else len(split.x_val)} "
        f"validation / {len(split.x_test)} test rows, stratified, seed {split.seed}",
        f"Validation AUC (the notebook's eval_metric): {baseline.validation_auc:.4f}",
        f"Test split ({len(split.x_test)} rows):",
        *binary_lines(baseline.evaluation),
        "",
        f"Candidate run: {baseline.run_id}  (bridge publish --run-id {baseline.run_id})",
    ]
    return "\n".join(lines)


def rejection_printer(trial: TrialOutcome, error: Exception) -> None:
    """Print why a trial's model is not a candidate (its family's next best is tried)."""
    click.echo(f"not a candidate: trial {trial.number} ({error}); trying the next best")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml).",
)
@click.option("--trials", type=int, default=None, help="Optuna trials (training.trials).")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Stop starting trials after this many seconds (training.timeout).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the split, the sampler and the models (training.seed).",
)
@click.option("--experiment", default=None, help="MLflow experiment (mlflow.experiment).")
@click.option(
    "--data", type=str, default=None, help="Data file: CSV, .dat, .arff or the UCI zip (data.path)."
)
@click.option(
    "--variant",
    type=click.Choice(["auto", "3C", "2C"]),
    default=None,
    help="Classes to train: 3C, 2C (a 3-class file is merged into Abnormal/Normal), or auto: "
    "the data file's own labels (data.variant).",
)
@click.option(
    "--families", default=None, help="Comma-separated model families to search (training.families)."
)
@click.option(
    "--preset",
    type=click.Choice([lab.PRESET]),
    default=None,
    help="aws-lab: the course lab's own model instead of a study (2C, 80/10/10 split, "
    "seed 42, XGBoost binary:logistic, 42 rounds, no tuning).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log details, and tracebacks on errors.")
def main(
    config: str | None,
    trials: int | None,
    timeout: float | None,
    seed: int | None,
    experiment: str | None,
    data: str | None,
    variant: str | None,
    families: str | None,
    preset: str | None,
    verbose: bool,
) -> None:
    """Run the Optuna study on the Vertebral Column data, tracked in MLflow."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_options(
            config, trials, timeout, seed, experiment, data, families, preset, variant
        )
        if preset == lab.PRESET:
            click.echo(format_lab_report(lab.train_lab_baseline(settings)))
            return
        training = settings.training
        click.echo(
            f"Study: {training.trials} trials over {', '.join(training.families)}; "
            f"objective CV {training.objective} ({training.cv_folds} folds), "
            f"seed {training.seed}"
        )
        started = time.perf_counter()
        result = run_study(
            settings,
            on_trial=ProgressPrinter(training.trials, training.objective),
            on_candidate=candidate_printer(training.objective),
            on_rejected=rejection_printer,
        )
        click.echo(format_report(result, time.perf_counter() - started))
        click.echo(f"Plots: {Path(training.reports_dir)}/ and the parent run's plots/")
    except (SettingsError, DataError, CandidateError, StudyError) as exc:
        _fail(str(exc), verbose)
    except KeyboardInterrupt:
        _fail("interrupted", verbose, code=130)
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        _fail(
            f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]
            + ("" if verbose else " (run with --verbose for details)"),
            verbose,
        )


def _fail(message: str, verbose: bool, code: int = 1) -> None:
    if verbose:
        log.exception(message)
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
