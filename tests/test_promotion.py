"""The promotion gate and reference sets (issue "Safe promotion", points 1 and 2).

Against the embedded server through the real store, with the two real published versions
of api_fixtures (v1 logistic regression, active; v2 kNN); the rules are MLflow's
``MetricThreshold``, checked against MLflow itself.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from api_fixtures import FAMILIES, MODEL, make_app, with_api
from conftest import data_path as shared_data_path
from sklearn.metrics import accuracy_score, f1_score

from conf.contract import GATE_METRICS
from conf.settings import GateRule, PromotionSettings, Settings
from pipelines.data import read_dataset
from registry_bridge import onnx_check, promotion
from registry_bridge.errors import RegistryError
from registry_bridge.reference import ReferenceRows
from registry_bridge.store import ModelStore


@pytest.fixture
def data_path():
    """The 3-class data file (VERTEBRAL_DATA)."""
    return shared_data_path()


def gated(published, *rules: GateRule) -> ModelStore:
    """The fixture's registry, seen by a store with ``rules``."""
    settings: Settings = replace(published.settings, promotion=PromotionSettings(rules=rules))
    return ModelStore(published.store.db, settings)


def reference_from(data_path, store: ModelStore) -> ReferenceRows:
    dataset = read_dataset(data_path)
    rows = ReferenceRows(dataset.features.to_numpy(dtype=np.float64), list(dataset.labels))
    store.set_reference_set(MODEL, rows, source="file column_3C_weka.csv", by="tests")
    return rows


def independent_metrics(store: ModelStore, version: int, rows: ReferenceRows) -> dict[str, float]:
    """Accuracy and macro F1 of a version on ``rows``, straight from onnxruntime and sklearn."""
    found = store.get_model_version(MODEL, version)
    session = onnx_check.load_session(store.read_artifact(found), found.label)
    labels = onnx_check.score(session, rows.features, found.onnx_io, found.label).labels
    return {
        "accuracy": accuracy_score(rows.labels, labels),
        "f1_macro": f1_score(rows.labels, labels, average="macro"),
    }


# --- the rules are MLflow's MetricThreshold ---------------------------------------------


def test_rules_agree_with_mlflow_validate_evaluation_results():
    """Check, on 600 random cases (every bound, both directions, zero and negative
    baselines, ties), that a rule passes exactly when MLflow's validation passes."""
    from mlflow import validate_evaluation_results
    from mlflow.exceptions import MlflowException
    from mlflow.models import EvaluationResult, MetricThreshold

    draw = random.Random(7)
    values = [0.0, 0.5, 0.8, -0.3, 0.81, 1.0]
    checked = 0
    for _ in range(600):
        metric = draw.choice(["accuracy", "log_loss", "fpr", "f1_macro"])
        bounds = {
            "threshold": draw.choice([None, 0.5, 0.8, 0.0]),
            "min_absolute_change": draw.choice([None, 0.01, 0.3]),
            "min_relative_change": draw.choice([None, 0.0, 0.05, 0.5]),
        }
        if all(v is None for v in bounds.values()):
            continue
        candidate = draw.choice(values) + draw.choice([0.0, 0.01, -0.01, 0.3])
        active = draw.choice(values)
        outcome = promotion.check_rules(
            [GateRule(metric, **bounds)], {metric: candidate}, {metric: active}
        )[0]
        threshold = MetricThreshold(**bounds, greater_is_better=GATE_METRICS[metric])
        try:
            validate_evaluation_results(
                {metric: threshold},
                EvaluationResult({metric: candidate}, {}),
                EvaluationResult({metric: active}, {}),
            )
            mlflow_passed = True
        except MlflowException:
            mlflow_passed = False
        assert outcome.passed == mlflow_passed, (metric, bounds, candidate, active, outcome)
        checked += 1
    assert checked > 500


def test_a_failed_rule_says_both_values_and_what_was_needed():
    """Check the refusal's line for each bound names the metric, both values and the need."""
    rules = [
        GateRule("f1_macro", threshold=0.9),
        GateRule("accuracy", min_absolute_change=0.05),
        GateRule("log_loss", min_relative_change=0.1),
    ]
    outcomes = promotion.check_rules(
        rules,
        {"f1_macro": 0.8, "accuracy": 0.82, "log_loss": 0.5},
        {"f1_macro": 0.7, "accuracy": 0.8, "log_loss": 0.52},
        "vertebral-column v3",
        "active vertebral-column v2",
    )
    lines = [line for o in outcomes for line in o.failures]
    assert lines == [
        "f1_macro 0.8000 on vertebral-column v3; the threshold is at least 0.9",
        "accuracy 0.8200 on vertebral-column v3 vs 0.8000 on active vertebral-column v2: "
        "needs at least 0.8500 (a change of +0.05)",
        "log_loss 0.5000 on vertebral-column v3 vs 0.5200 on active vertebral-column v2: "
        "needs at most 0.4680 (a change of -10.0%)",
    ]


def test_rules_are_checked_when_the_settings_load(tmp_path):
    """Check that a bad rule stops at start-up with one line naming it."""
    from conf.settings import SettingsError, load_settings

    for text, message in [
        ("f2: {threshold: 1}", "unknown metric 'f2'"),
        (
            "accuracy: {min_absolute_change: 0}",
            "accuracy.min_absolute_change: expected a number > 0",
        ),
        (
            "accuracy: {min_relative_change: 2}",
            "accuracy.min_relative_change: expected a number in [0, 1]",
        ),
        ("accuracy: {above: 1}", "unknown bound(s) ['above']"),
    ]:
        config = tmp_path / "rules.yaml"
        config.write_text(f"promotion:\n  rules:\n    {text}\n")
        with pytest.raises(SettingsError, match="^promotion.rules: ") as caught:
            load_settings(config, env={})
        assert message in str(caught.value)
    config.write_text("promotion:\n  rules:\n    f1_macro: {threshold: 0.8}\n")
    assert load_settings(config, env={}).promotion.rules == (GateRule("f1_macro", threshold=0.8),)


# --- reference sets -------------------------------------------------------------------


def test_a_reference_set_is_stored_fingerprinted_and_read_back(published, data_path):
    """Check the stored set: numbered, its sha256 the data set's fingerprint, rows intact,
    and a new set is a new number (the newest is used)."""
    store = published.store
    assert store.get_reference_set(MODEL) is None
    rows = reference_from(data_path, store)
    first = store.get_reference_set(MODEL)
    assert (first.version, first.rows) == (1, 310)
    assert first.class_counts == {"Hernia": 60, "Normal": 100, "Spondylolisthesis": 150}
    assert first.sha256 == read_dataset(data_path).fingerprint
    back = store.read_reference_set(first)
    assert back.labels == rows.labels and np.array_equal(back.features, rows.features)
    half = ReferenceRows(rows.features[::2], rows.labels[::2])
    store.set_reference_set(MODEL, half, source="half", by="tests")
    assert [r.version for r in store.list_reference_sets(MODEL)] == [1, 2]
    assert store.get_reference_set(MODEL).rows == 155


def test_a_reference_set_that_does_not_fit_the_name_is_refused(published, data_path):
    """Check the one-line refusals: other classes, a name with no version, too few rows."""
    store = published.store
    two_class = read_dataset(data_path, "2C")
    rows = ReferenceRows(two_class.features.to_numpy(dtype=np.float64), list(two_class.labels))
    with pytest.raises(RegistryError) as caught:
        store.set_reference_set(MODEL, rows, source="2C")
    assert caught.value.code == "INVALID_INPUT"
    assert "classes (Abnormal, Normal) are not those of" in caught.value.message
    assert "v2 (Hernia, Normal, Spondylolisthesis)" in caught.value.message
    three = read_dataset(data_path)
    partial = ReferenceRows(
        three.features.to_numpy(dtype=np.float64)[:5], list(three.labels)[:5]
    )  # the first rows are all Hernia
    with pytest.raises(RegistryError, match="every class must appear"):
        store.set_reference_set(MODEL, partial, source="five rows")
    with pytest.raises(RegistryError) as missing:
        store.set_reference_set("no-such-model", rows, source="x")
    assert missing.value.code == "NOT_FOUND"
    assert store.list_reference_sets(MODEL) == []


# --- the gate in an activation ----------------------------------------------------------


def test_a_failing_rule_refuses_the_activation_and_changes_nothing(published, data_path):
    """Check a refusal: CONFLICT, one line per failed rule with both values, the pointer
    and the log untouched."""
    store = gated(published, GateRule("accuracy", min_absolute_change=0.5))
    rows = reference_from(data_path, store)
    v1, v2 = (published.versions[f] for f in FAMILIES)
    expected = {v: independent_metrics(store, v, rows) for v in (v1, v2)}
    before = store.list_activation_log(MODEL)
    with pytest.raises(RegistryError) as caught:
        store.set_active_version(MODEL, v2, by="tests")
    assert caught.value.code == "CONFLICT"
    message = caught.value.message
    assert message.startswith(f"the promotion gate refused {MODEL} v{v2}:")
    assert f"accuracy {expected[v2]['accuracy']:.4f} on {MODEL} v{v2}" in message
    assert f"vs {expected[v1]['accuracy']:.4f} on active {MODEL} v{v1}" in message
    assert "--force --reason" in message
    assert store.get_active_version(MODEL).active_version == v1
    assert store.list_activation_log(MODEL) == before


def test_a_passing_gate_activates_and_its_values_go_into_the_audit_entry(published, data_path):
    """Check a pass: the log entry holds each rule's values for both versions, equal to
    accuracy and macro F1 computed independently on the reference set."""
    store = gated(
        published, GateRule("accuracy", threshold=0.5), GateRule("f1_macro", threshold=0.1)
    )
    rows = reference_from(data_path, store)
    v1, v2 = (published.versions[f] for f in FAMILIES)
    state = store.set_active_version(MODEL, v2, by="tests", reason="better on the reference")
    assert state.gate["passed"] and not state.gate["forced"]
    entry = store.list_activation_log(MODEL)[-1]
    assert entry.to_version == v2 and entry.gate == state.gate
    by_metric = {r["metric"]: r for r in entry.gate["rules"]}
    for version, side in ((v2, "candidate"), (v1, "active")):
        truth = independent_metrics(store, version, rows)
        for metric in ("accuracy", "f1_macro"):
            assert by_metric[metric][side] == pytest.approx(truth[metric], abs=1e-12)
    assert entry.gate["reference"]["version"] == 1 and entry.gate["reference"]["rows"] == 310


def test_force_needs_a_reason_and_is_recorded_as_forced(published, data_path):
    """Check --force: refused without a reason; with one it activates and the entry says
    forced, with the failed rule's values; rollback is never gated."""
    store = gated(published, GateRule("accuracy", min_absolute_change=0.5))
    reference_from(data_path, store)
    v1, v2 = (published.versions[f] for f in FAMILIES)
    with pytest.raises(RegistryError) as caught:
        store.set_active_version(MODEL, v2, force=True)
    assert caught.value.code == "INVALID_INPUT" and "reason" in caught.value.message
    state = store.set_active_version(MODEL, v2, by="tests", reason="demo: kNN anyway", force=True)
    assert state.active_version == v2
    entry = store.list_activation_log(MODEL)[-1]
    assert entry.reason == "demo: kNN anyway"
    assert entry.gate["forced"] and not entry.gate["passed"]
    assert entry.gate["rules"][0]["failures"][0].startswith("accuracy ")
    back = store.rollback(MODEL, by="tests", reason="back")  # rules still fail v1 vs v2? no gate
    assert back.active_version == v1 and store.list_activation_log(MODEL)[-1].gate is None


def test_no_rules_or_nothing_active_activates_as_before(published, data_path):
    """Check that without rules no gate runs, and that the first activation is not gated."""
    v2 = published.versions[FAMILIES[1]]
    state = published.store.set_active_version(MODEL, v2, by="tests")
    assert state.gate is None and published.store.list_activation_log(MODEL)[-1].gate is None
    store = gated(published, GateRule("accuracy", min_absolute_change=0.9))
    store.state.delete_one({"_id": MODEL})  # nothing active
    assert store.set_active_version(MODEL, v2, by="tests").gate is None


def test_rules_without_a_reference_set_refuse_with_the_command_that_adds_one(published):
    """Check that rules with no reference set refuse (the gate cannot decide) and say how."""
    store = gated(published, GateRule("accuracy", threshold=0.1))
    v2 = published.versions[FAMILIES[1]]
    with pytest.raises(RegistryError) as caught:
        store.set_active_version(MODEL, v2, by="tests")
    assert caught.value.code == "CONFLICT"
    assert f"bridge reference set {MODEL} --data FILE" in caught.value.message


def test_a_binary_metric_is_skipped_on_a_3_class_version(published, data_path):
    """Check that a rule on sensitivity (binary versions only) is reported skipped, not failed."""
    store = gated(published, GateRule("sensitivity", threshold=0.99))
    reference_from(data_path, store)
    state = store.set_active_version(MODEL, published.versions[FAMILIES[1]], by="tests")
    (rule,) = state.gate["rules"]
    assert rule["passed"] and "binary versions only" in rule["skipped"]


# --- through the API and the CLI ------------------------------------------------------------


def test_the_api_answers_409_with_each_rule_and_force_activates(published, mongo_client, data_path):
    """Check POST /models/activate: 409 with details naming the rule, then force with reason."""
    settings = replace(
        with_api(published.settings, admin_token="gate-token-1234567"),
        promotion=PromotionSettings(rules=(GateRule("accuracy", min_absolute_change=0.5),)),
    )
    reference_from(data_path, published.store)
    client = make_app(settings, mongo_client).test_client()
    auth = {"Authorization": "Bearer gate-token-1234567"}
    v2 = published.versions[FAMILIES[1]]
    refused = client.post("/models/activate", json={"name": MODEL, "version": v2}, headers=auth)
    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "CONFLICT" and error["details"][0]["rule"].startswith("accuracy ")
    bad = client.post(
        "/models/activate", json={"name": MODEL, "version": v2, "force": "yes"}, headers=auth
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["details"][0]["field"] == "force"
    forced = client.post(
        "/models/activate",
        json={"name": MODEL, "version": v2, "force": True, "reason": "teacher's demo"},
        headers=auth,
    )
    assert forced.status_code == 200 and forced.get_json()["gate"]["forced"] is True
    page = client.get(f"/?name={MODEL}").get_data(as_text=True)
    assert "FORCED" in page and "accuracy: v" in page


def test_the_cli_gate_reference_and_history(published, bridge, data_path, tmp_path):
    """Check `bridge reference set/show`, a refused `bridge activate` (exit 1, each rule),
    `--force` without `--reason` (usage error), forced, and `bridge history`'s gate column."""
    config = tmp_path / "rules.yaml"
    config.write_text("promotion:\n  rules:\n    accuracy: {min_absolute_change: 0.5}\n")
    gate_env = {"VERTEBRAL_CONFIG": str(config)}
    env = {"MODEL_NAME": MODEL}
    shown = bridge("reference", "show", env_changes=env)
    assert shown.exit_code == 0 and "has no reference set" in shown.output
    added = bridge("reference", "set", "--data", str(data_path), env_changes=env)
    assert added.exit_code == 0, added.output
    assert "r1: 310 rows (Hernia 60, Normal 100, Spondylolisthesis 150)" in added.output
    wrong = tmp_path / "2c.csv"
    wrong.write_text("pelvic_incidence,class\n1,Abnormal\n")
    refused_file = bridge("reference", "set", "--data", str(wrong), env_changes=env)
    assert refused_file.exit_code == 2 and "missing column(s)" in refused_file.output
    table = bridge("reference", "show", env_changes=env)
    assert "r1 (used)" in table.output and "file column_3C_weka.csv" in table.output
    v2 = str(published.versions[FAMILIES[1]])
    refused = bridge("activate", MODEL, v2, env_changes={**env, **gate_env})
    assert refused.exit_code == 1 and "the promotion gate refused" in refused.output
    assert "- accuracy " in refused.output
    no_reason = bridge("activate", MODEL, v2, "--force", env_changes={**env, **gate_env})
    assert no_reason.exit_code == 2 and "--force needs --reason" in no_reason.output
    forced = bridge(
        "activate",
        MODEL,
        v2,
        "--force",
        "--reason",
        "kNN for the demo",
        env_changes={**env, **gate_env},
    )
    assert forced.exit_code == 0, forced.output
    assert "FORCED" in forced.output and "accuracy: v" in forced.output
    history = bridge("history", MODEL, env_changes=env)
    assert "FORCED" in history.output and "promotion gate" in history.output


def test_a_fresh_bridge_activate_gates_without_importing_scikit_learn(
    published, data_path, tmp_path
):
    """Check the cold gate's premise (issue 24): `bridge activate` in a new process runs
    the gate on the reference set, and nothing it does imports scikit-learn (about 1 s
    of a fresh process, against the gate's 1 s budget)."""
    store = gated(published)
    reference_from(data_path, store)
    config = tmp_path / "rules.yaml"
    config.write_text("promotion:\n  rules:\n    accuracy: {threshold: 0.0}\n")
    report = tmp_path / "modules.json"
    settings = published.settings
    env = {
        **os.environ,
        "VERTEBRAL_CONFIG": str(config),
        "MONGODB_URI": settings.registry.mongodb_uri or "",
        "REGISTRY_DB": settings.registry.database,
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "MODEL_NAME": MODEL,
        "MODULES_REPORT": str(report),
    }
    # The scikit-learn modules loaded when the process ends (after the gate, the pointer
    # move and the MLflow mirror's update).
    script = (
        "import atexit, json, os, sys\n"
        "atexit.register(lambda: open(os.environ['MODULES_REPORT'], 'w').write(json.dumps(\n"
        "    sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))))\n"
        "from registry_bridge.cli import main\n"
        "main()\n"
    )
    v2 = str(published.versions[FAMILIES[1]])
    done = subprocess.run(
        [sys.executable, "-c", script, "activate", MODEL, v2, "--reason", "cold"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promotion gate passed" in done.stdout
    entry = store.list_activation_log(MODEL)[-1]
    assert entry.to_version == int(v2) and entry.gate["passed"]
    assert json.loads(report.read_text()) == []
