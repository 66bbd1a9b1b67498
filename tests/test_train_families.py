"""Check that every model family converts to ONNX with parity and loads back from skops."""

from __future__ import annotations

import optuna
import pytest
import skops.io
from conftest import data_path

from conf.contract import PARITY_TOLERANCE
from pipelines.candidate import check_parity, convert_to_onnx, evaluate, split_dataset
from pipelines.data import read_dataset
from pipelines.families import FAMILIES, build_pipeline, get_family, search_space

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def split():
    return split_dataset(read_dataset(data_path()), 0.2, 42)


def _sampled_params(family: str, seed: int) -> dict:
    """Hyperparameters drawn from the family's search space, as a study would."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    return get_family(family).suggest(trial)


CASES = [(name, "defaults", None) for name in FAMILIES] + [
    (name, f"sampled-{seed}", seed) for name in FAMILIES for seed in (1, 2)
]


@pytest.mark.parametrize(
    ("family", "label", "seed"), CASES, ids=[f"{f}-{kind}" for f, kind, _ in CASES]
)
def test_family_converts_to_onnx_with_parity(split, family, label, seed):
    """Check that the family's fitted pipeline converts and matches within PARITY_TOLERANCE."""
    params = get_family(family).defaults() if seed is None else _sampled_params(family, seed)
    pipeline = build_pipeline(family, params, 42).fit(split.x_train, split.y_train)
    model = convert_to_onnx(pipeline, family)
    assert check_parity(model, evaluate(pipeline, split), split, family) <= PARITY_TOLERANCE
    if seed is None:
        # MLflow saves with skops: the family must trust every non-default type it
        # holds. (The types do not depend on the values; dumping hundreds of trees is slow.)
        untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
        assert set(untrusted) <= set(get_family(family).skops_trusted_types)


@pytest.mark.parametrize("family", ["xgboost", "logistic_regression"])
def test_binary_family_converts_with_parity_at_a_threshold(family):
    """Check that a 2C model's ONNX graph gives the same labels at a threshold, and names."""
    from pipelines.threshold import Threshold

    dataset = read_dataset(data_path(), "2C")
    split = split_dataset(dataset, 0.1, 42, validation_size=0.1)
    pipeline = build_pipeline(family, get_family(family).defaults(), 42)
    pipeline.fit(split.x_train, split.y_train)
    assert list(pipeline.classes_) == ["Abnormal", "Normal"]
    # A threshold far from 0.5 relabels rows: parity must hold on the relabelled ones.
    evaluation = evaluate(pipeline, split, Threshold(0.8, "fixed", "Abnormal"))
    assert set(evaluation.labels) <= {"Abnormal", "Normal"}
    assert list(evaluation.labels) != list(pipeline.predict(split.x_test))
    assert check_parity(convert_to_onnx(pipeline, family), evaluation, split, family) <= 1e-5


def test_knn_manhattan_types_are_trusted(split):
    """Check that k-NN with p=1 (Manhattan) only needs the types the family trusts."""
    params = {**get_family("knn").defaults(), "knn_p": 1}
    pipeline = build_pipeline("knn", params, 0).fit(split.x_train, split.y_train)
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    assert set(untrusted) <= set(get_family("knn").skops_trusted_types)


def test_scaling_only_where_the_family_needs_it():
    """Check that distance and margin models scale their inputs and trees do not."""
    scaled = {name: build_pipeline(name, {}, 0).steps[0][0] == "scale" for name in FAMILIES}
    assert scaled == {
        "logistic_regression": True,
        "svc": True,
        "knn": True,
        "random_forest": False,
        "gradient_boosting": False,
        "xgboost": False,
    }


def test_unknown_family_is_named():
    """Check that an unknown family fails with its name and the known ones."""
    with pytest.raises(ValueError, match="'lightgbm'.*logistic_regression.*xgboost"):
        get_family("lightgbm")
    assert set(search_space(["svc"])) == {"model_family", "svc"}
