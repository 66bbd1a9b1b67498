"""The canary (issue "Safe promotion", point 4): a share of requests to a candidate,
sticky by key, every answer naming its version; guardrails that end it on every worker
of every instance; promotion through the gate.

Against the embedded server through the real store and the real API (in process, and
two instances under granian for the guardrail), with the two published versions of
api_fixtures (v1 logistic regression, active; v2 kNN) and a deliberately broken v3.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import requests
from api_fixtures import FAMILIES, MODEL, fitted_draft, make_app, record, with_api
from servers import ApiServer, wait_until

from conf.contract import FAMILIES as FAMILIES_ALL
from conf.settings import CanarySettings, GateRule, PromotionSettings
from demo.broken_model import broken_artifact
from registry_bridge import fleet
from registry_bridge.canary import WindowFigures, breach, routes_to_canary
from registry_bridge.errors import RegistryError
from registry_bridge.reference import ReferenceRows
from registry_bridge.store import ModelStore

TOKEN = "canary-admin-token-123"


# --- routing and guardrail rules ----------------------------------------------------------


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 50, 90])
def test_routing_holds_its_share_within_two_points_over_10000_requests(percent):
    """Check the share of 10,000 distinct keys routed to the canary is P ± 2 points, and
    that a key always goes the same way (sticky)."""
    keys = [f"patient-{i}".encode() for i in range(10_000)]
    routed = [routes_to_canary(key, percent) for key in keys]
    share = 100 * sum(routed) / len(keys)
    assert abs(share - percent) <= 2, share
    assert routed == [routes_to_canary(key, percent) for key in keys]


def test_a_breach_needs_enough_requests_and_names_both_figures():
    """Check the guardrails: nothing before min_requests; the error-rate rule; the p99 rule
    (only with enough active requests to compare); within the margins, no breach."""
    rules = CanarySettings(max_error_rate_increase=0.05, max_p99_ratio=3.0, min_requests=20)
    healthy = WindowFigures(200, 1, 4.0)
    assert breach(WindowFigures(19, 19, 5.0), healthy, rules) is None
    why = breach(WindowFigures(20, 4, 5.0), healthy, rules)
    assert why is not None and why.startswith("error rate 20.0% (4 of 20) vs 0.5%")
    slow = breach(WindowFigures(40, 0, 13.0), healthy, rules)
    assert slow is not None and slow.startswith("p99 13.0 ms vs 4.0 ms")
    assert breach(WindowFigures(40, 2, 11.0), healthy, rules) is None
    assert breach(WindowFigures(40, 0, 13.0), WindowFigures(5, 0, 4.0), rules) is None


# --- the store ------------------------------------------------------------------------------


@pytest.fixture
def broken(published) -> int:
    """v3: the kNN version's graph, failing on degree_spondylolisthesis above 1000."""
    candidate = published.candidates[FAMILIES[1]]
    draft = replace(candidate.draft, source="test:broken-knn")
    result = published.store.publish_model_version(draft, broken_artifact(candidate.artifact))
    return result.version.version


def test_start_end_and_the_audit_log(published):
    """Check a canary is held by the pointer and logged, refusals name why, deleting its
    version is refused, and an activation ends it."""
    store: ModelStore = published.store
    v1, v2 = (published.versions[f] for f in FAMILIES)
    for percent in (0, 100, -3):
        with pytest.raises(RegistryError, match="percent must be above 0 and below 100"):
            store.start_canary(MODEL, v2, percent)
    with pytest.raises(RegistryError, match="is the active version already"):
        store.start_canary(MODEL, v1, 10)
    with pytest.raises(RegistryError) as missing:
        store.start_canary(MODEL, 99, 10)
    assert missing.value.code == "NOT_FOUND"
    state = store.start_canary(MODEL, v2, 10, by="tests", reason="try kNN")
    assert state.canary["version"] == v2 and state.canary["percent"] == 10.0
    assert store.get_active_version(MODEL).canary["version"] == v2
    with pytest.raises(RegistryError, match="answers a canary share"):
        store.delete_model_version(MODEL, v2, by="tests")
    entry = store.list_activation_log(MODEL)[-1]
    assert (entry.action, entry.from_version, entry.to_version) == ("canary-start", v1, v2)
    assert entry.details == {"percent": 10.0} and entry.reason == "try kNN"
    ended = store.end_canary(MODEL, by="tests", reason="enough")
    assert ended.canary is None and store.get_active_version(MODEL).canary is None
    assert store.list_activation_log(MODEL)[-1].action == "canary-abort"
    with pytest.raises(RegistryError, match="no canary of"):
        store.end_canary(MODEL)
    assert store.end_canary(MODEL, version=v2) is None  # a guardrail's: already ended
    store.start_canary(MODEL, v2, 10)
    store.set_active_version(MODEL, v2, by="tests")
    assert store.get_active_version(MODEL).canary is None  # the switch ended it


def test_promote_passes_through_the_gate(published, data_path_fixture):
    """Check --promote: refused by a failing rule (the canary keeps running), forced with
    a reason it activates the canary's version, logged as canary-promote."""
    from pipelines.data import read_dataset

    settings = replace(
        published.settings,
        promotion=PromotionSettings(rules=(GateRule("accuracy", min_absolute_change=0.5),)),
    )
    store = ModelStore(published.store.db, settings)
    dataset = read_dataset(data_path_fixture)
    rows = ReferenceRows(dataset.features.to_numpy(dtype=np.float64), list(dataset.labels))
    store.set_reference_set(MODEL, rows, source="data file")
    v2 = published.versions[FAMILIES[1]]
    store.start_canary(MODEL, v2, 20)
    with pytest.raises(RegistryError, match="the promotion gate refused"):
        store.promote_canary(MODEL, by="tests")
    assert store.get_active_version(MODEL).canary["version"] == v2
    state = store.promote_canary(MODEL, by="tests", reason="teacher says so", force=True)
    assert state.active_version == v2 and state.canary is None
    entry = store.list_activation_log(MODEL)[-1]
    assert entry.action == "canary-promote" and entry.gate["forced"]


@pytest.fixture
def data_path_fixture():
    from conftest import data_path

    return data_path()


# --- the API -----------------------------------------------------------------------------


def test_answers_name_their_version_and_a_key_sticks_to_it(published, mongo_client):
    """Check, in process: with a 50 % canary each answer names the version that produced
    it (body and X-Model-Version, whose probabilities are that version's), one
    X-Request-Key always gets one version, and about half the keys go to the canary."""
    v1, v2 = (published.versions[f] for f in FAMILIES)
    published.store.start_canary(MODEL, v2, 50)
    client = make_app(with_api(published.settings, pointer_lease_ms=0), mongo_client).test_client()
    row = record(published.inputs[0])
    seen: dict[str, int] = {}
    for i in range(120):
        key = f"user-{i}"
        answer = client.post("/predict", json={"records": [row]}, headers={"X-Request-Key": key})
        assert answer.status_code == 200
        version = answer.get_json()["model"]["version"]
        assert answer.headers["X-Model-Version"] == str(version)
        assert version == (v2 if routes_to_canary(key.encode(), 50) else v1)
        seen[key] = version
    again = client.post("/predict", json={"records": [row]}, headers={"X-Request-Key": "user-7"})
    assert again.get_json()["model"]["version"] == seen["user-7"]
    assert 40 <= sum(v == v2 for v in seen.values()) <= 80
    pinned = client.post(
        f"/models/{MODEL}/versions/{v1}/predict",
        json={"records": [row]},
        headers={"X-Request-Key": next(k for k, v in seen.items() if v == v2)},
    )
    assert pinned.get_json()["model"]["version"] == v1  # a pinned version is never rerouted


@pytest.mark.slow
def test_a_failing_canary_is_ended_by_its_guardrail_on_every_worker_of_two_instances(
    published, broken, tmp_path
):
    """Check, under granian with two instances of two workers: a canary whose graph fails
    on some records answers 5xx there; a worker's guardrail ends it and writes an audit
    entry with both versions' figures; once it is written, every request on both
    instances is answered by the active version."""
    v1 = published.versions[FAMILIES[0]]
    config = {"canary": {"min_requests": 5, "window_s": 30}}
    failing = record(published.inputs[0]) | {"degree_spondylolisthesis": 2000.0}
    keys = [f"k{i}" for i in range(400)]
    canary_keys = [k for k in keys if routes_to_canary(k.encode(), 50)]
    with (
        ApiServer(published.settings, tmp_path, workers=2, config=config) as first,
        ApiServer(published.settings, tmp_path, workers=2, config=config) as second,
    ):
        published.store.start_canary(MODEL, broken, 50, by="tests")

        def routing() -> list[dict]:  # what the live workers report routing (bridge fleet)
            workers = fleet.live(fleet.list_workers(published.store.db, MODEL))
            return [w["canary"] for w in workers if w.get("canary")]

        wait_until(lambda: len(routing()) == 4, 15, "not every worker reported the canary")
        assert {(c["version"], c["percent"]) for c in routing()} == {(broken, 50.0)}
        failures = 0
        for i, key in enumerate(canary_keys * 3):
            server = (first, second)[i % 2]
            answer = requests.post(
                server.url("/predict"),
                json={"records": [failing]},
                headers={"X-Request-Key": key},
                timeout=10,
            )
            if answer.status_code >= 500:
                failures += 1
                assert answer.headers["X-Model-Version"] == str(broken)
            if published.store.get_active_version(MODEL).canary is None:
                break
        assert failures >= 5

        def abort_entry():  # written just after the pointer's update, not in the same write
            log = published.store.list_activation_log(MODEL)
            return next((e for e in reversed(log) if e.action == "canary-abort"), None)

        wait_until(lambda: abort_entry() is not None, 15, "the guardrail did not end the canary")
        assert published.store.get_active_version(MODEL).canary is None
        entry = abort_entry()
        assert entry.reason.startswith("guardrail: error rate") and entry.by.startswith(
            "guardrail on"
        )
        assert entry.details["canary"]["version"] == broken
        assert entry.details["canary"]["errors"] >= 5
        assert entry.details["active"]["version"] == v1
        # The entry is written before the abort's commit wait. The reads from before the
        # abort hold the 50 ms lease the test's store stored with the pointer: past it, no
        # worker may still route by one of them.
        time.sleep(0.1)
        for server in (first, second):
            for key in canary_keys[:40]:
                answer = requests.post(
                    server.url("/predict"),
                    json={"records": [failing]},
                    headers={"X-Request-Key": key},
                    timeout=10,
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["model"]["version"] == v1


def test_the_cli_starts_shows_and_aborts_a_canary(published, bridge):
    """Check `bridge canary`: usage errors, start (VERSION alone takes MODEL_NAME), status,
    abort, and the history's entries."""
    v2 = str(published.versions[FAMILIES[1]])
    assert "no canary of" in bridge("canary", MODEL).output
    alone = bridge("canary", MODEL, v2)
    assert alone.exit_code == 2 and "both VERSION and --percent" in alone.output
    both = bridge("canary", MODEL, v2, "--percent", "10", "--abort")
    assert both.exit_code == 2 and "do not go together" in both.output
    out_of_range = bridge("canary", MODEL, v2, "--percent", "100")
    assert out_of_range.exit_code == 2
    started = bridge("canary", v2, "--percent", "12.5", "--reason", "try kNN")
    assert started.exit_code == 0, started.output
    assert f"{MODEL} v{v2} answers 12.5% of requests beside v1" in started.output
    assert f"v{v2} answers 12.5% beside v1" in bridge("canary", MODEL).output
    ended = bridge("canary", MODEL, "--abort", "--reason", "enough")
    assert ended.exit_code == 0 and "canary ended" in ended.output
    again = bridge("canary", MODEL, "--abort")
    assert again.exit_code == 1 and "no canary of" in again.output
    history = bridge("history", MODEL).output
    assert "canary-start" in history and "canary-abort" in history


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES_ALL)
def test_the_broken_candidate_loads_for_every_family_and_fails_only_where_meant(family):
    """Check demo/broken_model.py on each family's real graph (their opsets differ: SVC's
    is 9, where a Slice with inputs does not exist): it loads, answers as before on
    ordinary rows, and fails on a row whose degree_spondylolisthesis is above 1000."""
    from conf.settings import load_settings
    from pipelines.candidate import split_dataset
    from pipelines.data import load_dataset
    from registry_bridge.onnx_check import load_session

    settings = load_settings()
    dataset = load_dataset(settings.data)
    split = split_dataset(dataset, settings.training.test_size, settings.training.seed)
    draft, artifact, _ = fitted_draft("m", family, dataset, split, settings.training.seed)
    broken = load_session(
        broken_artifact(artifact, output=draft.onnx_io["probabilities_output"]), family
    )
    healthy = load_session(artifact, family)
    rows = split.x_test.to_numpy(dtype=np.float32)[:5]
    name = healthy.get_inputs()[0].name
    assert np.allclose(broken.run(None, {name: rows})[1], healthy.run(None, {name: rows})[1])
    rows[2, 5] = 2000.0
    with pytest.raises(Exception, match="Gather"):
        broken.run(None, {name: rows})
