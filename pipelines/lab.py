"""The course lab's own model as a baseline: ``python -m pipelines.train --preset aws-lab``.

The AWS Academy notebook trains SageMaker's built-in XGBoost (``binary:logistic``,
``num_round`` 42, ``eval_metric`` auc, every other hyperparameter at its default) on
the 2-class file, split 80/10/10 stratified with ``random_state`` 42. This module
reproduces that set-up without any tuning and logs it as an ordinary candidate run
(tag ``preset=aws-lab``), so it can be published, served and put beside the tuned
study on the same test rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from sklearn.pipeline import Pipeline

from conf.settings import Settings
from pipelines.candidate import (
    Evaluation,
    Split,
    evaluate,
    log_candidate,
    split_dataset,
    threshold_for,
)
from pipelines.data import Dataset, load_dataset
from pipelines.families import build_pipeline
from pipelines.metrics import cross_validate, roc_auc, summarise_folds
from pipelines.tracking import ensure_experiment, experiment_for

PRESET = "aws-lab"
FAMILY = "xgboost"
# The settings the notebook fixes: the 2-class file and its 80/10/10 split, seed 42.
SETTINGS: dict[str, Any] = {
    "data.variant": "2C",
    "training.test_size": 0.1,
    "training.validation_size": 0.1,
    "training.seed": 42,
    "training.families": FAMILY,
}
# num_round 42; SageMaker's (= XGBoost's) defaults for the rest: eta 0.3, max_depth 6,
# subsample 1, colsample_bytree 1, lambda 1.
PARAMS: dict[str, Any] = {
    "xgb_n_estimators": 42,
    "xgb_learning_rate": 0.3,
    "xgb_max_depth": 6,
    "xgb_subsample": 1.0,
    "xgb_colsample_bytree": 1.0,
    "xgb_reg_lambda": 1.0,
}


@dataclass(frozen=True)
class LabBaseline:
    """The lab's model: its candidate run, the fitted pipeline and its test evaluation."""

    run_id: str
    pipeline: Pipeline
    evaluation: Evaluation
    split: Split
    dataset: Dataset
    validation_auc: float
    seconds: float


def train_lab_baseline(settings: Settings) -> LabBaseline:
    """Fit the lab's XGBoost on the settings' split (use :data:`SETTINGS`) and log it.

    The threshold follows ``training.threshold_rule`` on the CV folds of the training
    split, like every binary candidate; ``threshold_rule: 0.65`` fixes it by hand as
    the students did.
    """
    started = time.perf_counter()
    training = settings.training
    dataset = load_dataset(settings.data)
    split = split_dataset(dataset, training.test_size, training.seed, training.validation_size)
    experiment_id = ensure_experiment(
        settings.mlflow, experiment_for(settings.mlflow, dataset.variant)
    )
    pipeline = build_pipeline(FAMILY, PARAMS, training.seed)
    folds = cross_validate(pipeline, split.x_train, split.y_train, training.cv_folds, training.seed)
    threshold = threshold_for(pipeline, split, dataset, training)
    pipeline.fit(split.x_train, split.y_train)
    validation_auc = float("nan")
    if split.x_val is not None and split.y_val is not None and dataset.positive_class:
        # The notebook's eval_metric: AUC on the validation rows, reported, not tuned on.
        column = list(pipeline.classes_).index(dataset.positive_class)
        validation_auc = roc_auc(
            np.asarray(split.y_val) == dataset.positive_class,
            pipeline.predict_proba(split.x_val)[:, column],
        )
    run_id = log_candidate(
        pipeline,
        FAMILY,
        PARAMS,
        split,
        dataset,
        cv_metrics=summarise_folds(folds),
        experiment_id=experiment_id,
        threshold=threshold,
        tags={"preset": PRESET, MLFLOW_RUN_NAME: f"{PRESET}-{FAMILY}"},
    )
    client = MlflowClient(settings.mlflow.tracking_uri)
    client.log_batch(
        run_id,
        params=[
            Param(k, str(v))
            for k, v in {
                "preset": PRESET,
                "objective": "binary:logistic",
                "num_round": PARAMS["xgb_n_estimators"],
                "eval_metric": "auc",
                "validation_size": training.validation_size,
                "test_size": training.test_size,
                "split_seed": training.seed,
            }.items()
        ],
        metrics=[Metric("validation_auc", validation_auc, int(time.time() * 1000), 0)]
        if np.isfinite(validation_auc)
        else [],
    )
    return LabBaseline(
        run_id,
        pipeline,
        evaluate(pipeline, split, threshold),
        split,
        dataset,
        validation_auc,
        time.perf_counter() - started,
    )
