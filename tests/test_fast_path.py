"""The fast path of JSON scoring (api/fast.py) answers exactly what the Flask views answer.

Every body is sent twice to the same app: once through the fast path, once straight to
the Flask app behind it, and the answers must be the same bytes, status and headers.
The fast path must also really answer the usual request (not hand everything over), and
hand over everything it does not answer itself.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from typing import Any

import pytest
from api_fixtures import FAMILIES, MODEL, make_app, record

from api.fast import FastPredict, route
from conf.contract import FEATURES

JSON = "application/json"
HEADERS = ("Content-Type", "X-Model-Name", "X-Model-Version", "X-Model-Stale", "X-Request-Id")


class Counting:
    """The Flask app behind the fast path, counting the requests handed to it."""

    def __init__(self, app: Any):
        self.app = app
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.app(environ, start_response)


@pytest.fixture
def fast(app) -> FastPredict:
    assert isinstance(app.wsgi_app, FastPredict)
    app.wsgi_app.app = Counting(app.wsgi_app.app)
    return app.wsgi_app


# Every route the fast path answers: /predict's, MLflow's and a named model's JSON.
NATIVE_PATHS = ("/predict", "/invocations", f"/models/{MODEL}/predict")
OIP_PATH = f"/v2/models/{MODEL}/infer"


def _both(
    app, fast: FastPredict, data: bytes | str, path: str = "/predict", **kw: Any
) -> tuple[Any, Any]:
    """The answer through the fast path, then the Flask view's own answer (one request id
    for both: every native answer names its request, and the bytes must be the same)."""
    kw.setdefault("content_type", "application/json")
    kw.setdefault("headers", {"X-Request-Id": "same-id-1"})
    through_fast = app.test_client().post(path, data=data, **kw)
    app.wsgi_app = fast.app
    try:
        through_flask = app.test_client().post(path, data=data, **kw)
    finally:
        app.wsgi_app = fast
    return through_fast, through_flask


def _same(first: Any, second: Any) -> None:
    assert first.status_code == second.status_code
    assert first.data == second.data
    for name in HEADERS:
        assert (name in first.headers) == (name in second.headers), name
    for name in HEADERS:
        assert first.headers.get(name) == second.headers.get(name), name
    assert first.headers["X-Worker-Pid"] == second.headers["X-Worker-Pid"]


def _bodies(published) -> list[Any]:
    rows = published.inputs[:3]
    one = record(rows[0])
    return [
        one,
        [record(r) for r in rows],
        {"records": [record(r) for r in rows]},
        {"dataframe_records": [one]},
        {"dataframe_split": {"columns": list(FEATURES), "data": [list(map(float, rows[0]))]}},
        {"instances": [list(map(float, r)) for r in rows]},
        {**one, FEATURES[0]: one[FEATURES[0]] * 1000},  # out of range: served and flagged
    ]


@pytest.mark.parametrize("path", NATIVE_PATHS)
def test_the_usual_requests_are_answered_by_the_fast_path_as_flask_would(
    app, fast, published, path
):
    """Check that every accepted JSON shape gets the view's exact answer, without Flask."""
    app.test_client().post(path, json=record(published.inputs[0]))  # the name is known now
    for body in _bodies(published):
        data = json.dumps(body)
        before = fast.app.calls
        through_fast, through_flask = _both(app, fast, data, path)
        assert through_fast.status_code == 200, through_fast.json
        assert fast.app.calls == before + 1  # only the second request reached Flask
        _same(through_fast, through_flask)


def _oip_bodies(published) -> list[Any]:
    rows = [list(map(float, r)) for r in published.inputs[:3]]
    return [
        {"inputs": [{"name": "x", "shape": [3, 6], "datatype": "FP64", "data": rows}]},
        {
            "id": "r-1",
            "inputs": [
                {"name": f, "shape": [3], "datatype": "FP32", "data": [r[i] for r in rows]}
                for i, f in enumerate(FEATURES)
            ],
            "outputs": [{"name": "label"}, {"name": "probabilities"}],
        },
    ]


def test_oip_inference_requests_are_answered_by_the_fast_path_as_flask_would(app, fast, published):
    """Check that an OIP infer request gets the OIP view's exact answer, without Flask,
    and that its errors are the view's, byte for byte."""
    app.test_client().post(OIP_PATH, json=_oip_bodies(published)[0])  # the name is known now
    for body in _oip_bodies(published):
        before = fast.app.calls
        through_fast, through_flask = _both(app, fast, json.dumps(body), OIP_PATH)
        assert through_fast.status_code == 200, through_fast.json
        assert fast.app.calls == before + 1
        _same(through_fast, through_flask)
    bad = {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP64", "data": [1] * 5}]}
    through_fast, through_flask = _both(app, fast, json.dumps(bad), OIP_PATH)
    assert through_fast.status_code == 400 and "'x'" in through_fast.json["error"]
    _same(through_fast, through_flask)


@pytest.mark.parametrize(
    "data",
    [
        b'{"pelvic_incidence": 1',  # malformed
        b"\xff\xfe{}",  # not UTF-8
        b"[]",  # no records
        b'{"a": 1, "a": 2}',  # duplicate key
        json.dumps({f: "1.0" for f in FEATURES}).encode(),  # strings are not numbers
        json.dumps({f: 1e39 for f in FEATURES}).encode(),  # beyond float32
        json.dumps({"records": [{}] * 2}).encode(),  # missing fields
        b"[" * 5000 + b"]" * 5000,  # nested too deep
    ],
)
def test_every_error_is_the_flask_answer(app, fast, data):
    """Check that a bad body gets the Flask view's error, byte for byte, never a fast 200."""
    through_fast, through_flask = _both(app, fast, data)
    assert 400 <= through_fast.status_code < 500
    _same(through_fast, through_flask)


def test_requests_it_does_not_answer_reach_flask_unread(app, fast, published):
    """Check that another media type, a pinned version, a Host or a chunked body is handed
    over intact."""
    data = json.dumps(record(published.inputs[0]))
    client = app.test_client()
    answers = [
        client.post("/predict", data=data, content_type="text/plain"),  # 415 from the view
        client.post(f"/models/{MODEL}/versions/1/predict", data=data, content_type=JSON),
        client.post(
            "/predict", data=data, content_type="application/json", headers={"Host": "evil.test"}
        ),
        client.post(  # no Content-Length: a chunked body, as a WSGI server may pass it on
            "/predict",
            input_stream=io.BytesIO(data.encode()),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        ),
    ]
    assert [a.status_code for a in answers] == [415, 200, 400, 200]
    assert fast.app.calls == len(answers)
    assert "Host" in answers[2].json["error"]["message"]


def test_a_stale_version_is_answered_by_flask_with_its_header(app, fast, published, monkeypatch):
    """Check that while the registry is unreachable the answer says stale, as the view does."""
    data = json.dumps(record(published.inputs[0]))
    first = app.test_client().post("/predict", data=data, content_type="application/json")
    assert first.status_code == 200
    active = app.extensions["vertebral"].active

    def down() -> Any:
        raise active._outage(RuntimeError("down"))

    monkeypatch.setattr(active, "active_version", down)
    through_fast, through_flask = _both(app, fast, data)
    assert through_fast.headers["X-Model-Stale"] == "true"
    _same(through_fast, through_flask)


def test_metrics_and_access_log_count_a_fast_answer_once(app, fast, published, caplog):
    """Check that /metrics and the access log see a fast answer as one /predict request."""
    data = json.dumps(record(published.inputs[0]))
    client = app.test_client()

    def predict_requests() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("api_requests_total{")
            and 'endpoint="/predict"' in line
            and 'status="200"' in line
        )

    before = predict_requests()
    with caplog.at_level(logging.INFO, logger="api.access"):
        answer = client.post("/predict", data=data, content_type="application/json")
        assert answer.status_code == 200
    assert predict_requests() == before + 1
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "api.access"]
    version = published.versions[FAMILIES[0]]
    assert line["path"] == "/predict" and line["status"] == 200
    assert line["model_version"] == version
    assert fast.app.calls == 2  # the two /metrics requests only


def test_capture_through_the_fast_path_keeps_the_request_id(published, mongo_client):
    """Check that a captured fast answer echoes the client's X-Request-Id and records it."""
    settings = published.settings
    settings = replace(settings, capture=replace(settings.capture, sample_percent=100))
    app = make_app(settings, mongo_client)
    app.wsgi_app.app = flask = Counting(app.wsgi_app.app)
    data = json.dumps(record(published.inputs[0]))
    answer = app.test_client().post(
        "/predict", data=data, content_type="application/json", headers={"X-Request-Id": "abc-1"}
    )
    assert answer.status_code == 200 and answer.headers["X-Request-Id"] == "abc-1"
    capture = app.extensions["capture"]
    assert capture.flush()
    db = mongo_client[settings.registry.database]
    assert db.inference_log.count_documents({"request_ids": "abc-1"}) == 1
    assert flask.calls == 0


def test_every_request_hook_of_the_app_runs_on_the_fast_path_too(app):
    """Check that the app's request hooks (before, after, teardown, on the app or on any
    blueprint) are exactly those the fast path does in its place (FastPredict.HOOKS): a
    hook added later, which the fast path would silently skip, fails here."""
    hooks = {
        function.__name__
        for registry in (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
            app.url_value_preprocessors,
        )
        for functions in registry.values()
        for function in functions
    }
    assert hooks == set(FastPredict.HOOKS)


def test_a_hook_the_fast_path_does_not_run_is_caught(app):
    """Check that the check above can fail: a new before_request hook is seen."""

    @app.before_request
    def _audit() -> None:
        return None

    hooks = {f.__name__ for functions in app.before_request_funcs.values() for f in functions}
    assert "_audit" in hooks and not hooks <= set(FastPredict.HOOKS)


def test_the_fast_routes_label_metrics_with_the_views_own_rules(app):
    """Check that each route the fast path answers names a rule of the app (the endpoint
    label /metrics and the access log give it), and the same rule Flask would match."""
    adapter = app.url_map.bind("localhost")
    for path in (*NATIVE_PATHS, OIP_PATH):
        found = route(path)
        assert found is not None, path
        rule, _ = adapter.match(path, method="POST", return_rule=True)
        assert found.rule == rule.rule, path
    assert route(f"/models/{MODEL}/versions/1/predict") is None
    assert route("/batch-predict") is None
