"""The model families the study searches: each a scikit-learn Pipeline and a search space.

Hyperparameter names carry a family prefix (``svc_C``, ``rf_max_depth``) because the
study's space is conditional on ``model_family`` and the same name with two ranges
would confuse both the sampler and the side-by-side view in the MLflow UI.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from conf import contract
from pipelines import xgb

# scikit-learn 1.9 deprecates SVC(probability=True) in favour of CalibratedClassifierCV,
# which skl2onnx does not convert the same way; the issue asks for SVC with probabilities.
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*probab.*deprecated")
warnings.filterwarnings(
    "ignore", category=FutureWarning, message=r"Attribute `prob[AB]_` was deprecated"
)


@dataclass(frozen=True)
class Param:
    """One hyperparameter: an Optuna distribution and the value used when none is searched."""

    name: str
    kind: str  # "float", "int" or "categorical"
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial, prefix: str) -> Any:
        """Ask the trial for a value of this parameter."""
        key = f"{prefix}_{self.name}"
        if self.kind == "float":
            low, high = self._bounds()
            return trial.suggest_float(key, low, high, log=self.log)
        if self.kind == "int":
            low, high = self._bounds()
            return trial.suggest_int(key, int(low), int(high), step=self.step or 1)
        return trial.suggest_categorical(key, list(self.choices))

    def _bounds(self) -> tuple[float, float]:
        # Only categorical parameters go without a range.
        if self.low is None or self.high is None:
            raise ValueError(f"{self.name}: a {self.kind} parameter needs low and high")
        return self.low, self.high

    def describe(self) -> str:
        """A one-line human description of the range (for the study's search space)."""
        if self.kind == "categorical":
            return f"one of {list(self.choices)}"
        scale = ", log" if self.log else (f", step {self.step}" if self.step else "")
        return f"{self.kind} in [{self.low}, {self.high}{scale}]"


@dataclass(frozen=True)
class Family:
    """A model family: its estimator, whether it needs scaling, and its search space."""

    name: str
    prefix: str
    estimator: Callable[[dict[str, Any], int], ClassifierMixin]
    scaled: bool
    params: tuple[Param, ...] = field(default_factory=tuple)
    # Types skops refuses to load unless the saved model trusts them (MLflow saves
    # sklearn models with skops); a test checks every fitted family needs no more.
    skops_trusted_types: tuple[str, ...] = ()
    # The ai.onnx.ml opset to convert with, when the family's converter needs an older
    # one than skl2onnx's latest (onnxmltools' XGBoost converter writes version 3).
    onnx_ml_opset: int | None = None

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's hyperparameters for this family, keyed by their prefixed names."""
        return {f"{self.prefix}_{p.name}": p.suggest(trial, self.prefix) for p in self.params}

    def defaults(self) -> dict[str, Any]:
        """Reasonable hyperparameters without a search (quick runs, fixtures)."""
        return {f"{self.prefix}_{p.name}": p.default for p in self.params}

    def build(self, params: dict[str, Any], seed: int) -> Pipeline:
        """An unfitted Pipeline with the given (prefixed) hyperparameters."""
        values = {p.name: params.get(f"{self.prefix}_{p.name}", p.default) for p in self.params}
        steps: list[tuple[str, Any]] = [("scale", StandardScaler())] if self.scaled else []
        steps.append(("model", self.estimator(values, seed)))
        return Pipeline(steps)


def _logistic_regression(v: dict[str, Any], seed: int) -> ClassifierMixin:
    return LogisticRegression(
        C=v["C"], class_weight=v["class_weight"], max_iter=2000, random_state=seed
    )


def _svc(v: dict[str, Any], seed: int) -> ClassifierMixin:
    return SVC(
        C=v["C"],
        gamma=v["gamma"],
        class_weight=v["class_weight"],
        kernel="rbf",
        probability=True,
        random_state=seed,
    )


def _knn(v: dict[str, Any], seed: int) -> ClassifierMixin:
    # kd_tree pinned so the pickled-by-skops types do not depend on the data size.
    # weights="distance" is not searched: skl2onnx 1.20 converts it with wrong
    # probabilities (up to 0.25 off, labels flipped), which the parity check refuses.
    return KNeighborsClassifier(
        n_neighbors=v["n_neighbors"], weights="uniform", p=v["p"], algorithm="kd_tree"
    )


def _random_forest(v: dict[str, Any], seed: int) -> ClassifierMixin:
    # One job: the study already keeps both cores busy with CV, and n_jobs=1 is reproducible.
    return RandomForestClassifier(
        n_estimators=v["n_estimators"],
        max_depth=v["max_depth"],
        min_samples_leaf=v["min_samples_leaf"],
        max_features=v["max_features"],
        class_weight=v["class_weight"],
        n_jobs=1,
        random_state=seed,
    )


def _gradient_boosting(v: dict[str, Any], seed: int) -> ClassifierMixin:
    return GradientBoostingClassifier(
        n_estimators=v["n_estimators"],
        learning_rate=v["learning_rate"],
        max_depth=v["max_depth"],
        subsample=v["subsample"],
        random_state=seed,
    )


def _xgboost(v: dict[str, Any], seed: int) -> ClassifierMixin:
    # binary:logistic for two classes, multi:softprob for three (XGBoost picks on fit).
    return xgb.LabelledXGBClassifier(
        n_estimators=v["n_estimators"],
        learning_rate=v["learning_rate"],
        max_depth=v["max_depth"],
        subsample=v["subsample"],
        colsample_bytree=v["colsample_bytree"],
        reg_lambda=v["reg_lambda"],
        tree_method="hist",
        n_jobs=1,
        random_state=seed,
    )


_BALANCE = ("class_weight", (None, "balanced"))
_TREE_TYPES = ("sklearn.tree._tree.Tree",)
_KNN_TYPES = (
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
)

_SPECS: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "logistic_regression",
            "lr",
            _logistic_regression,
            scaled=True,
            params=(
                Param("C", "float", 1.0, 1e-3, 1e2, log=True),
                Param(_BALANCE[0], "categorical", None, choices=_BALANCE[1]),
            ),
        ),
        # Small gamma with large C sums hundreds of large dual coefficients: onnxruntime's
        # float32 SVM then drifts past the 1e-5 parity bound, so those corners are left out.
        Family(
            "svc",
            "svc",
            _svc,
            scaled=True,
            params=(
                Param("C", "float", 1.0, 1e-2, 30.0, log=True),
                Param("gamma", "float", 0.1, 1e-2, 1.0, log=True),
                Param(_BALANCE[0], "categorical", None, choices=_BALANCE[1]),
            ),
        ),
        Family(
            "knn",
            "knn",
            _knn,
            scaled=True,
            skops_trusted_types=_KNN_TYPES,
            params=(
                Param("n_neighbors", "int", 7, 3, 31),
                Param("p", "categorical", 2, choices=(1, 2)),
            ),
        ),
        Family(
            "random_forest",
            "rf",
            _random_forest,
            scaled=False,
            skops_trusted_types=_TREE_TYPES,
            params=(
                Param("n_estimators", "int", 100, 50, 200, step=25),
                Param("max_depth", "int", 6, 2, 12),
                Param("min_samples_leaf", "int", 1, 1, 8),
                Param("max_features", "float", 0.5, 0.3, 1.0),
                Param(_BALANCE[0], "categorical", None, choices=_BALANCE[1]),
            ),
        ),
        Family(
            "gradient_boosting",
            "gb",
            _gradient_boosting,
            scaled=False,
            skops_trusted_types=_TREE_TYPES,
            params=(
                Param("n_estimators", "int", 100, 50, 200, step=25),
                Param("learning_rate", "float", 0.1, 0.01, 0.3, log=True),
                Param("max_depth", "int", 2, 1, 4),
                Param("subsample", "float", 1.0, 0.6, 1.0),
            ),
        ),
        Family(
            "xgboost",
            "xgb",
            _xgboost,
            scaled=False,
            skops_trusted_types=xgb.SKOPS_TYPES,
            onnx_ml_opset=xgb.ONNX_ML_OPSET,
            params=(
                Param("n_estimators", "int", 100, 25, 300, step=25),
                Param("learning_rate", "float", 0.1, 0.01, 0.3, log=True),
                Param("max_depth", "int", 3, 2, 6),
                Param("subsample", "float", 1.0, 0.6, 1.0),
                Param("colsample_bytree", "float", 1.0, 0.5, 1.0),
                Param("reg_lambda", "float", 1.0, 1e-2, 10.0, log=True),
            ),
        ),
    )
}


if set(_SPECS) != set(contract.FAMILIES):  # a family is its contract name plus its spec here
    raise ImportError(
        f"pipelines.families and conf.contract.FAMILIES disagree: "
        f"{sorted(set(_SPECS) ^ set(contract.FAMILIES))}"
    )
# In the contract's order, which is the order plots and tables show them in.
FAMILIES: dict[str, Family] = {name: _SPECS[name] for name in contract.FAMILIES}


def get_family(name: str) -> Family:
    """The family called ``name``; ValueError listing the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def build_pipeline(family: str, params: dict[str, Any], seed: int) -> Pipeline:
    """An unfitted Pipeline of ``family`` with the trial's (prefixed) hyperparameters."""
    return get_family(family).build(params, seed)


def search_space(families: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The study's search space as plain data, for the parent run."""
    return {
        "model_family": list(families),
        **{
            name: {
                f"{get_family(name).prefix}_{p.name}": p.describe() for p in get_family(name).params
            }
            for name in families
        },
    }
