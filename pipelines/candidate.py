"""Turn a fitted Pipeline into a candidate MLflow run, exactly as docs/run-contract.md says.

A candidate run holds the test-split evaluation, the model in two flavours (sklearn and
ONNX, each with a signature and an input example), ``registry/model_card.json`` and
the tags the registry bridge looks for. The ONNX conversion is checked against the
sklearn pipeline before anything is logged, so a run is never tagged ``candidate``
with a model that would not publish.

Public entry points:

- :func:`log_candidate` ``(pipeline, family, params, split, dataset, *, run_id=None,
  cv_metrics=None, experiment_id=None) -> run_id`` — log a fitted pipeline as a
  candidate (into an existing run, e.g. a study's trial run, or a new run).
- :func:`quick_candidate_run` ``(settings, family="logistic_regression", params=None,
  experiment=None) -> run_id`` — for tests and fixtures: split the configured data,
  fit one small pipeline, score it by CV and log it as a candidate in a few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import sklearn
import skops
from mlflow.models import infer_signature
from skl2onnx import convert_sklearn, get_latest_tested_opset_version
from skl2onnx.common.data_types import FloatTensorType
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from conf.contract import (
    EXAMPLE_ROWS,
    FEATURES,
    MODEL_CARD,
    ONNX_INPUT,
    ONNX_IO,
    ONNX_LABEL,
    ONNX_PROBABILITIES,
    PARITY_TOLERANCE,
)
from conf.settings import Settings, TrainingSettings
from pipelines.data import Dataset, load_dataset
from pipelines.families import build_pipeline, get_family
from pipelines.metrics import cross_validate, evaluation_metrics, summarise_folds
from pipelines.threshold import Threshold, choose_threshold
from pipelines.tracking import ensure_experiment
from registry_bridge.scoring.session import build_session
from registry_bridge.scoring.threshold import decide

log = logging.getLogger(__name__)

SKLEARN_MODEL_NAME = "sklearn_model"
ONNX_MODEL_NAME = "onnx_model"


class CandidateError(RuntimeError):
    """A candidate could not be produced; the message names the model family."""


@dataclass(frozen=True)
class Split:
    """The stratified train/test split every trial and candidate of a study shares.

    With a validation share (the lab's 80/10/10), ``x_val``/``y_val`` hold it; the
    study never trains on them, so every model is compared on the same test rows.
    """

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    seed: int
    test_size: float
    x_val: pd.DataFrame | None = None
    y_val: pd.Series | None = None


@dataclass(frozen=True)
class Evaluation:
    """A fitted pipeline's predictions and metrics on the test split."""

    labels: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    metrics: dict[str, float]  # test_* keys, per-class ones included
    threshold: Threshold | None = None  # binary models: labels come from it

    @property
    def positive_scores(self) -> np.ndarray:
        """P(positive class) of each test row (binary models only)."""
        assert self.threshold is not None
        return self.probabilities[:, list(self.classes).index(self.threshold.positive_class)]


def split_dataset(
    dataset: Dataset, test_size: float, seed: int, validation_size: float = 0.0
) -> Split:
    """The stratified train/(validation/)test split of ``dataset`` (same seed, same rows).

    With ``validation_size`` the held-out share (test + validation) is split off first
    and then halved the same way, as the course lab's notebook does (80/10/10 with
    ``test_size`` = ``validation_size`` = 0.1).
    """
    # A binary variant stratifies on the lab's 0/1 coding (positive = 1): the order of
    # the classes decides which rows are drawn, and these are the lab's rows.
    positive = dataset.positive_class

    def strata(labels: pd.Series) -> pd.Series:
        return labels if positive is None else (labels == positive).astype(int)

    held_out = test_size + validation_size
    x_train, x_rest, y_train, y_rest = train_test_split(
        dataset.features,
        dataset.labels,
        test_size=held_out,
        stratify=strata(dataset.labels),
        random_state=seed,
    )
    if not validation_size:
        return Split(x_train, x_rest, y_train, y_rest, seed, test_size)
    x_test, x_val, y_test, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=validation_size / held_out,
        stratify=strata(y_rest),
        random_state=seed,
    )
    return Split(x_train, x_test, y_train, y_test, seed, test_size, x_val, y_val)


def threshold_for(
    pipeline: Pipeline, split: Split, dataset: Dataset, training: TrainingSettings
) -> Threshold | None:
    """A binary model's threshold by ``training.threshold_rule`` on its CV folds; else None."""
    if dataset.positive_class is None:
        return None
    return choose_threshold(
        pipeline,
        split.x_train,
        split.y_train,
        dataset.positive_class,
        training.threshold_rule,
        training.cv_folds,
        training.seed,
    )


def evaluate(pipeline: Pipeline, split: Split, threshold: Threshold | None = None) -> Evaluation:
    """Score a pipeline fitted on the training split on the whole test split.

    A binary model's labels come from ``threshold``; its metrics then include the
    lab's (sensitivity, specificity, ... at that threshold).
    """
    probabilities = pipeline.predict_proba(split.x_test)
    classes = tuple(str(c) for c in pipeline.classes_)
    if threshold is None:
        labels = pipeline.predict(split.x_test)
    else:
        labels, _ = decide(probabilities, classes, threshold.value, threshold.positive_class)
    metrics = evaluation_metrics(
        split.y_test,
        labels,
        probabilities,
        classes,
        None if threshold is None else threshold.positive_class,
    )
    return Evaluation(
        labels,
        probabilities,
        classes,
        {f"test_{name}": value for name, value in metrics.items()},
        threshold,
    )


def convert_to_onnx(pipeline: Pipeline, family: str) -> onnx.ModelProto:
    """The ONNX graph of a fitted pipeline: input ``input`` float32 [None, 6], no zipmap.

    Raises:
        CandidateError: skl2onnx could not convert it; the message names the family.
    """
    classifier = pipeline.steps[-1][1]
    ml_opset = get_family(family).onnx_ml_opset
    opsets = (
        None
        if ml_opset is None
        else {"": get_latest_tested_opset_version(), "ai.onnx.ml": ml_opset}
    )
    try:
        model = convert_sklearn(
            pipeline,
            name=f"vertebral-{family}",
            initial_types=[(ONNX_INPUT, FloatTensorType([None, len(FEATURES)]))],
            options={id(classifier): {"zipmap": False}},
            target_opset=opsets,
        )
    except Exception as exc:  # skl2onnx raises many types; all mean "did not convert"
        raise CandidateError(
            f"model family {family}: ONNX conversion failed: "
            f"{type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    outputs = [output.name for output in model.graph.output]
    if outputs != [ONNX_LABEL, ONNX_PROBABILITIES]:
        raise CandidateError(
            f"model family {family}: ONNX outputs are {outputs}, expected "
            f"[{ONNX_LABEL!r}, {ONNX_PROBABILITIES!r}]"
        )
    return model


def onnx_predict(
    model: onnx.ModelProto,
    features: pd.DataFrame | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of an ONNX candidate model (onnxruntime, CPU)."""
    session = build_session(model.SerializeToString(), f"ONNX candidate {model.graph.name}")
    inputs = np.asarray(features, dtype=np.float32)
    labels, probabilities = session.run([ONNX_LABEL, ONNX_PROBABILITIES], {ONNX_INPUT: inputs})
    return labels, probabilities


def check_parity(
    model: onnx.ModelProto, evaluation: Evaluation, split: Split, family: str
) -> float:
    """Check the ONNX model gives the sklearn labels and probabilities on the test split.

    Returns:
        The largest absolute probability difference.

    Raises:
        CandidateError: a label differs or a probability differs by more than PARITY_TOLERANCE.
    """
    labels, probabilities = onnx_predict(model, split.x_test[list(FEATURES)])
    threshold = evaluation.threshold
    if threshold is not None:  # the label a binary version serves is the threshold's
        labels, _ = decide(
            probabilities, evaluation.classes, threshold.value, threshold.positive_class
        )
    mismatched = np.flatnonzero(labels.astype(str) != evaluation.labels.astype(str))
    if mismatched.size:
        row = int(mismatched[0])
        raise CandidateError(
            f"model family {family}: ONNX model disagrees with scikit-learn on "
            f"{mismatched.size} test rows (first: row {row}, {labels[row]!r} vs "
            f"{evaluation.labels[row]!r})"
        )
    worst = float(np.max(np.abs(probabilities - evaluation.probabilities)))
    if worst > PARITY_TOLERANCE:
        raise CandidateError(
            f"model family {family}: ONNX probabilities differ from "
            f"scikit-learn by {worst:.2e} (> {PARITY_TOLERANCE:g})"
        )
    return worst


def model_card(
    family: str, dataset: Dataset, split: Split, evaluation: Evaluation
) -> dict[str, Any]:
    """The ``registry/model_card.json`` document of docs/run-contract.md."""
    threshold = evaluation.threshold.to_card() if evaluation.threshold else {}
    return {
        **threshold,
        "model_family": family,
        "variant": dataset.variant,
        "classes": list(evaluation.classes),
        "features": list(FEATURES),
        "input_schema": [
            {
                "name": name,
                "dtype": "float64",
                "min": float(split.x_train[name].min()),
                "max": float(split.x_train[name].max()),
            }
            for name in FEATURES
        ],
        "data_fingerprint": dataset.fingerprint,
        "onnx": dict(ONNX_IO),
        "evaluation": {
            "inputs": split.x_test[list(FEATURES)].to_numpy(dtype=float).tolist(),
            "labels": [str(label) for label in evaluation.labels],
            "probabilities": evaluation.probabilities.astype(float).tolist(),
            # The labels above are the threshold's: the parity checks apply it too. The
            # true labels let `bridge publish --threshold` rescore at another threshold,
            # and make the test split a name's first reference set (registry_bridge/reference.py).
            **{k: v for k, v in threshold.items() if k != "threshold_rule"},
            "true_labels": [str(y) for y in split.y_test],
        },
    }


class _DropServingExampleWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to validate serving input example" not in record.getMessage()


@contextmanager
def _quiet_onnx_example_check() -> Iterator[None]:
    # MLflow's ONNX pyfunc flattens every output of a DataFrame input into one column,
    # so its check of the DataFrame input example (which the run contract asks for)
    # always fails on the [n, classes] probabilities and logs a long warning. Parity
    # is checked properly by check_parity, so that one warning is dropped.
    logger = logging.getLogger("mlflow.models.model")
    quiet = _DropServingExampleWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _log_models(
    pipeline: Pipeline,
    onnx_model: onnx.ModelProto,
    split: Split,
    evaluation: Evaluation,
    family: str,
) -> tuple[str, str]:
    """Log both flavours in the active run; returns (sklearn_uri, onnx_uri)."""
    example = split.x_test[list(FEATURES)].head(EXAMPLE_ROWS)
    sklearn_signature = infer_signature(split.x_train[list(FEATURES)], evaluation.labels)
    onnx_signature = infer_signature(
        split.x_train[list(FEATURES)],
        {
            ONNX_LABEL: evaluation.labels.astype(str),
            ONNX_PROBABILITIES: evaluation.probabilities.astype(np.float32),
        },
    )
    # Explicit requirements: MLflow's inference imports the model in a subprocess,
    # which costs seconds per model and adds nothing we do not know.
    sklearn_info = mlflow.sklearn.log_model(
        pipeline,
        name=SKLEARN_MODEL_NAME,
        signature=sklearn_signature,
        input_example=example,
        skops_trusted_types=list(get_family(family).skops_trusted_types),
        pip_requirements=[
            f"scikit-learn=={sklearn.__version__}",
            f"skops=={skops.__version__}",
            f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}",
        ],
    )
    with _quiet_onnx_example_check():
        onnx_info = mlflow.onnx.log_model(
            onnx_model,
            name=ONNX_MODEL_NAME,
            signature=onnx_signature,
            input_example=example,
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            pip_requirements=[
                f"onnx=={onnx.__version__}",
                f"onnxruntime=={onnxruntime.__version__}",
                f"numpy=={np.__version__}",
            ],
        )
    return sklearn_info.model_uri, onnx_info.model_uri


def _log_threshold(evaluation: Evaluation, split: Split, family: str) -> None:
    """The threshold (metric + tags) and the lab's two threshold plots, in the active run."""
    from pipelines.threshold_plots import binary_figures  # matplotlib: only for binary candidates

    threshold = evaluation.threshold
    assert threshold is not None
    mlflow.log_metric("decision_threshold", threshold.value)
    mlflow.set_tags({"threshold_rule": threshold.rule, "positive_class": threshold.positive_class})
    positive = np.asarray(split.y_test) == threshold.positive_class
    for name, figure in binary_figures(
        positive, evaluation.positive_scores, threshold.value, family
    ).items():
        mlflow.log_figure(figure, f"plots/{name}")


def log_candidate(
    pipeline: Pipeline,
    family: str,
    params: Mapping[str, Any],
    split: Split,
    dataset: Dataset,
    *,
    run_id: str | None = None,
    cv_metrics: Mapping[str, float] | None = None,
    experiment_id: str | None = None,
    threshold: Threshold | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log a pipeline fitted on ``split.x_train`` as a candidate run; returns the run id.

    Args:
        pipeline: fitted on the training split of ``split``.
        family: one of :data:`pipelines.families.FAMILIES` (tag ``model_family``).
        params: the hyperparameters (logged, with ``model_family``, on a new run only:
            a study's trial run already holds them).
        split: the train/test split the pipeline was fitted on.
        dataset: the data set the split came from (fingerprint, variant).
        run_id: an existing run (e.g. the best trial's nested run) to make a candidate;
            None starts a new run in ``experiment_id`` or the active experiment.
        cv_metrics: ``cv_<m>_mean``/``cv_<m>_std`` to log (new runs; trial runs have them).
        experiment_id: where a new run goes (default: the active experiment).
        threshold: a binary model's decision threshold (see :func:`threshold_for`):
            the labels, the lab's metrics, the card and two plots follow it.
        tags: extra tags of the run (e.g. ``preset``).

    Raises:
        CandidateError: ONNX conversion or the parity check failed (the run is marked
            FAILED and carries no ``candidate`` tag).
    """
    get_family(family)
    evaluation = evaluate(pipeline, split, threshold)
    active = mlflow.active_run()
    if run_id is not None:
        context = mlflow.start_run(run_id=run_id, nested=active is not None)
    else:
        context = mlflow.start_run(
            experiment_id=experiment_id, run_name=f"{family}-candidate", nested=active is not None
        )
    with context as run:
        if run_id is None:
            mlflow.log_params({**{k: str(v) for k, v in params.items()}, "model_family": family})
            mlflow.set_tag("model_family", family)
        if cv_metrics:
            mlflow.log_metrics(dict(cv_metrics))
        try:
            onnx_model = convert_to_onnx(pipeline, family)
            worst = check_parity(onnx_model, evaluation, split, family)
        except CandidateError as exc:
            # Said on the run itself, which the context manager then marks FAILED.
            mlflow.set_tag("candidate_error", str(exc)[:5000])
            raise
        sklearn_uri, onnx_uri = _log_models(pipeline, onnx_model, split, evaluation, family)
        mlflow.log_dict(model_card(family, dataset, split, evaluation), MODEL_CARD)
        mlflow.log_metrics({**evaluation.metrics, "onnx_parity_max_abs_diff": worst})
        if threshold is not None:
            _log_threshold(evaluation, split, family)
        # Tags last: a run that failed half-way is never listed as a candidate.
        mlflow.set_tags(
            {
                "candidate": "true",
                "model_family": family,
                "data_fingerprint": dataset.fingerprint,
                "variant": dataset.variant,
                # `bridge runs` shows which classes a run predicts without reading its card.
                "classes": ",".join(evaluation.classes),
                "onnx_model_uri": onnx_uri,
                "sklearn_model_uri": sklearn_uri,
                **dict(tags or {}),
            }
        )
        log.info(
            "candidate %s: run %s (test f1_macro %.3f, ONNX parity %.1e)",
            family,
            run.info.run_id,
            evaluation.metrics["test_f1_macro"],
            worst,
        )
        return run.info.run_id


def quick_candidate_run(
    settings: Settings,
    family: str = "logistic_regression",
    params: Mapping[str, Any] | None = None,
    experiment: str | None = None,
) -> str:
    """Fit one small pipeline on the configured data and log it as a candidate run.

    For tests and fixtures: no study, default hyperparameters of ``family`` unless
    ``params`` (prefixed names, e.g. ``{"lr_C": 0.5}``) says otherwise; 5-fold CV
    metrics are real. Uses ``settings.mlflow`` (tracking URI, experiment, artifact
    root) and ``settings.training`` (seed, test_size, cv_folds).
    """
    dataset = load_dataset(settings.data)
    training = settings.training
    split = split_dataset(dataset, training.test_size, training.seed, training.validation_size)
    experiment_id = ensure_experiment(settings.mlflow, experiment)
    chosen = {**get_family(family).defaults(), **(params or {})}
    pipeline = build_pipeline(family, chosen, training.seed)
    folds = cross_validate(pipeline, split.x_train, split.y_train, training.cv_folds, training.seed)
    threshold = threshold_for(pipeline, split, dataset, training)
    pipeline.fit(split.x_train, split.y_train)
    return log_candidate(
        pipeline,
        family,
        chosen,
        split,
        dataset,
        cv_metrics=summarise_folds(folds),
        experiment_id=experiment_id,
        threshold=threshold,
    )
