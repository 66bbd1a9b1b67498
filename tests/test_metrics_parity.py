"""pipelines/metrics.py (numpy only) gives what scikit-learn gives, on every metric.

Training, publishing and the promotion gate compute their metrics with pipelines.metrics,
which no longer imports scikit-learn (issue 24: importing it was most of a fresh `bridge
activate`'s gate). Each metric is checked against scikit-learn 1.9's own function, to
1e-12, on seeded random cases: two and three classes, string labels, tied scores, a
class missing from the predictions or from the truth, probabilities of exactly 0 and 1,
float32 probabilities. The whole of ``evaluation_metrics`` is also checked against the
scikit-learn implementation it replaced. scikit-learn is imported by this test only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from pipelines import metrics

TOLERANCE = 1e-12
CLASSES = {2: ["Abnormal", "Normal"], 3: ["Hernia", "Normal", "Spondylolisthesis"]}


def sklearn_evaluation_metrics(
    y_true: Any, labels: Any, probabilities: np.ndarray, classes: list[str], positive: str | None
) -> dict[str, float]:
    """The scikit-learn implementation pipelines.metrics had before (the reference)."""
    truth = np.asarray(y_true)
    if len(classes) == 2:
        roc_auc = skm.roc_auc_score(truth, probabilities[:, 1], labels=classes)
    else:
        roc_auc = skm.roc_auc_score(truth, probabilities, multi_class="ovr", labels=classes)
    result = {
        "accuracy": skm.accuracy_score(truth, labels),
        "balanced_accuracy": skm.balanced_accuracy_score(truth, labels),
        "f1_macro": skm.f1_score(truth, labels, average="macro", labels=classes, zero_division=0),
        "roc_auc_ovr": roc_auc,
        "log_loss": skm.log_loss(truth, probabilities, labels=classes),
    }
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, labels, labels=classes, zero_division=0
    )
    for index, name in enumerate(classes):
        result[f"precision_{name}"] = precision[index]
        result[f"recall_{name}"] = recall[index]
        result[f"f1_{name}"] = f1[index]
    if positive is not None:
        said = np.asarray(labels) == positive
        is_positive = truth == positive
        scores = probabilities[:, classes.index(positive)]
        tp = float(np.sum(is_positive & said))
        fp = float(np.sum(~is_positive & said))
        tn = float(np.sum(~is_positive & ~said))
        fn = float(np.sum(is_positive & ~said))
        both = is_positive.any() and not is_positive.all()

        def ratio(a: float, b: float) -> float:
            return a / b if b else 0.0

        result.update(
            sensitivity=ratio(tp, tp + fn),
            specificity=ratio(tn, tn + fp),
            precision=ratio(tp, tp + fp),
            npv=ratio(tn, tn + fn),
            fpr=ratio(fp, fp + tn),
            fnr=ratio(fn, fn + tp),
            fdr=ratio(fp, fp + tp),
            accuracy=ratio(tp + tn, len(truth)),
            auc=skm.roc_auc_score(is_positive, scores) if both else float("nan"),
            tp=tp,
            fp=fp,
            tn=tn,
            fn=fn,
        )
    return {k: float(v) for k, v in result.items()}


def same(ours: float, theirs: float) -> bool:
    """Equal to TOLERANCE, NaN equal to NaN."""
    if np.isnan(theirs):
        return bool(np.isnan(ours))
    return abs(ours - theirs) <= TOLERANCE


def random_case(seed: int) -> dict[str, Any]:
    """One seeded case: truth, predicted labels and probabilities in class order."""
    rng = np.random.default_rng(seed)
    k = 2 if seed % 2 else 3
    classes = CLASSES[k]
    rows = int(rng.integers(4, 80))
    kind = seed % 7
    if kind in (0, 1):
        # coarse grid: many tied scores, exact 0 and 1 among them
        counts = rng.multinomial(10, np.ones(k) / k, size=rows)
        probabilities = counts / 10.0
    elif kind == 2:
        # one-hot: every probability exactly 0 or 1
        probabilities = np.eye(k)[rng.integers(0, k, rows)]
    else:
        probabilities = rng.dirichlet(np.full(k, float(rng.choice([0.3, 1.0, 5.0]))), size=rows)
    if seed % 5 == 0:
        probabilities = probabilities.astype(np.float32)
    truth_pool = list(range(k))
    if k == 3 and seed % 5 == 3:
        truth_pool.remove(int(rng.integers(0, 3)))  # a class absent from the truth
    truth_codes = rng.choice(truth_pool, rows)
    truth_codes[: len(truth_pool)] = truth_pool  # every class of the pool present
    if seed % 3 == 0:
        predicted_codes = probabilities.argmax(axis=1)
    else:
        pool = list(range(k))
        if seed % 4 == 1:
            pool.remove(int(rng.integers(0, k)))  # a class never predicted
        predicted_codes = rng.choice(pool, rows)
    return {
        "classes": classes,
        "truth": [classes[c] for c in truth_codes],
        "labels": [classes[c] for c in predicted_codes],
        "probabilities": probabilities,
        "positive": "Abnormal" if k == 2 else None,
    }


CASES = range(400)


def test_every_metric_equals_scikit_learn_on_random_cases():
    """Check evaluation_metrics against the scikit-learn implementation it replaced, and
    each metric function against its scikit-learn function, on 400 seeded cases."""
    seen = {"ties": 0, "absent_from_truth": 0, "absent_from_labels": 0, "zero_one": 0, "f32": 0}
    for seed in CASES:
        case = random_case(seed)
        classes, truth, labels = case["classes"], case["truth"], case["labels"]
        proba = case["probabilities"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn's undefined-metric warnings
            expected = sklearn_evaluation_metrics(truth, labels, proba, classes, case["positive"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # ours never warns
            got = metrics.evaluation_metrics(truth, labels, proba, classes, case["positive"])
        assert set(got) == set(expected), seed
        wrong = {k: (got[k], expected[k]) for k in expected if not same(got[k], expected[k])}
        assert not wrong, f"case {seed}: {wrong}"

        # each function on its own
        assert same(metrics.accuracy(truth, labels), skm.accuracy_score(truth, labels))
        column = proba[:, 1]
        positive = np.asarray(truth) == classes[1]
        if positive.any() and not positive.all():
            assert same(metrics.roc_auc(positive, column), skm.roc_auc_score(positive, column))
        else:
            assert np.isnan(metrics.roc_auc(positive, column))
        ours = metrics.precision_recall_f1(truth, labels, classes)
        theirs = skm.precision_recall_fscore_support(truth, labels, labels=classes, zero_division=0)
        for a, b in zip(ours, theirs[:3], strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)

        seen["ties"] += len(np.unique(proba[:, 0])) < len(proba)
        seen["absent_from_truth"] += len(set(truth)) < len(classes)
        seen["absent_from_labels"] += len(set(labels)) < len(classes)
        seen["zero_one"] += bool(np.isin(proba, (0.0, 1.0)).any())
        seen["f32"] += proba.dtype == np.float32
    # the cases really cover what they are meant to
    assert all(count >= 20 for count in seen.values()), seen


def test_the_auc_handles_tied_scores_as_scikit_learn():
    """Check a few hand-made tie patterns, where the ROC curve has diagonal segments."""
    cases = [
        ([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]),
        ([1, 0, 1, 0, 1], [0.9, 0.9, 0.1, 0.1, 0.5]),
        ([0, 0, 1, 1, 1, 0], [0.2, 0.4, 0.4, 0.4, 1.0, 0.0]),
        ([1, 0], [0.0, 1.0]),
        ([True, False, True], [1.0, 0.0, 1.0]),
    ]
    rng = np.random.default_rng(24)
    for _ in range(300):
        n = int(rng.integers(2, 200))
        truth = rng.integers(0, 2, n)
        truth[:2] = (0, 1)
        scores = rng.integers(0, int(rng.integers(1, 6)) + 1, n) / 5.0
        cases.append((list(truth), list(scores)))
    for truth, scores in cases:
        expected = skm.roc_auc_score(truth, scores)
        assert same(metrics.roc_auc(np.asarray(truth) == 1, np.asarray(scores)), expected)


def test_log_loss_clips_exact_zeros_and_ones_as_scikit_learn():
    """Check a true class given probability 0 (clipped to eps, float64 and float32), rows
    that do not sum to 1 (scored as they are, without scikit-learn's warning), and
    probability 1 everywhere."""
    classes = CLASSES[3]
    truth = ["Hernia", "Normal", "Spondylolisthesis", "Hernia"]
    cases = [
        np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
        np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], "f4"),
        np.array([[0.2, 0.3, 0.4], [0.1, 0.6, 0.3], [0.3, 0.3, 0.3], [1.0, 0.0, 0.0]]),
        np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
    ]
    for proba in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = skm.log_loss(truth, proba, labels=classes)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = metrics.log_loss(truth, proba, classes)
        assert same(got, expected), (proba, got, expected)


def test_undefined_and_invalid_cases_follow_the_documented_behaviour():
    """Check where scikit-learn warns (an AUC with one class in the truth: NaN, without a
    warning here; a predicted class absent from the truth: left out of the balanced
    accuracy) and where it raises (ValueError here too)."""
    two, three = CLASSES[2], CLASSES[3]
    one_class = ["Normal", "Normal", "Normal"]
    proba2 = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.roc_auc_ovr(one_class, proba2, two))
        none_positive = metrics.binary_metrics([False] * 3, [True, False, True], proba2[:, 1])
        assert np.isnan(none_positive["auc"])
        got = metrics.balanced_accuracy(["Normal", "Normal"], ["Normal", "Abnormal"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(skm.roc_auc_score(one_class, proba2[:, 1], labels=two))
        assert got == skm.balanced_accuracy_score(["Normal", "Normal"], ["Normal", "Abnormal"])
    proba3 = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.5, 0.25, 0.25]])
    truth3 = ["Hernia", "Normal", "Hernia"]  # Spondylolisthesis absent: its AUC is NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(skm.roc_auc_score(truth3, proba3, multi_class="ovr", labels=three))
    assert np.isnan(metrics.roc_auc_ovr(truth3, proba3, three))

    refused = [
        # a true label outside the classes
        lambda: metrics.log_loss(["Hernia", "Other"], proba3[:2], three),
        lambda: metrics.roc_auc_ovr(["Hernia", "Other"], proba3[:2], three),
        # probabilities outside [0, 1]
        lambda: metrics.log_loss(["Abnormal", "Normal"], np.array([[1.2, -0.2], [0, 1]]), two),
        # a multi-class row that does not sum to 1
        lambda: metrics.roc_auc_ovr(truth3, proba3 * 0.9, three),
        # fewer than two classes, NaN scores
        lambda: metrics.log_loss(["Normal"], np.array([[1.0]]), ["Normal"]),
        lambda: metrics.roc_auc([True, False], np.array([np.nan, 0.5])),
    ]
    for call in refused:
        with pytest.raises(ValueError):
            call()
    sklearn_refuses = [
        lambda: skm.log_loss(["Hernia", "Other"], proba3[:2], labels=three),
        lambda: skm.log_loss(["Abnormal", "Normal"], np.array([[1.2, -0.2], [0, 1]]), labels=two),
        lambda: skm.roc_auc_score(truth3, proba3 * 0.9, multi_class="ovr", labels=three),
        lambda: skm.roc_auc_score([True, False], np.array([np.nan, 0.5])),
    ]
    for call in sklearn_refuses:
        with pytest.raises(ValueError):
            call()


def test_classes_in_another_order_read_the_columns_in_that_order():
    """Check the documented difference: the columns follow ``classes`` as given, so an
    unsorted order scores as scikit-learn scores the same columns sorted."""
    for seed in range(40):
        case = random_case(seed)
        classes, proba = case["classes"], np.asarray(case["probabilities"])
        order = np.random.default_rng(seed).permutation(len(classes))
        shuffled = [classes[i] for i in order]
        sorted_result = metrics.classification_metrics(
            case["truth"], case["labels"], proba, classes
        )
        shuffled_result = metrics.classification_metrics(
            case["truth"], case["labels"], proba[:, order], shuffled
        )
        for name, value in sorted_result.items():
            assert same(shuffled_result[name], value), (seed, name)


def test_a_fresh_process_computes_the_gate_metrics_without_scikit_learn():
    """Check the property the cold promotion gate relies on: importing pipelines.metrics
    and registry_bridge.promotion and computing the metrics imports no scikit-learn."""
    script = """
import json, sys
import numpy as np
import registry_bridge.promotion
from pipelines.metrics import evaluation_metrics
proba = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
result = evaluation_metrics(["Abnormal", "Normal", "Normal"], ["Normal", "Abnormal", "Normal"],
                            proba, ["Abnormal", "Normal"], "Abnormal")
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in
                                    ("sklearn", "scipy")), "auc": result["auc"]}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["modules"] == []
    assert answer["auc"] == pytest.approx(0.0)
