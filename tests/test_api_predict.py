"""Tests of /predict and /invocations: every input shape, strict validation, limits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from api_fixtures import FAMILIES, MODEL, make_app, record, with_api

from conf.contract import FEATURES


def _post(client, body, path="/predict", **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def test_single_record_names_version_and_gives_every_class(client, published):
    """Check that one record gets a label, its probability and every class's probability."""
    row = published.inputs[0]
    response = _post(client, record(row))
    assert response.status_code == 200, response.json
    body = response.json
    v1 = published.versions[FAMILIES[0]]
    assert body["model"]["name"] == MODEL and body["model"]["version"] == v1
    assert response.headers["X-Model-Version"] == str(v1)
    assert "X-Model-Stale" not in response.headers
    [prediction] = body["predictions"]
    classes = published.candidates[FAMILIES[0]].draft.classes
    assert list(prediction["probabilities"]) == classes
    assert math.isclose(sum(prediction["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert prediction["probability"] == prediction["probabilities"][prediction["label"]]
    assert prediction["label"] == max(
        prediction["probabilities"], key=prediction["probabilities"].get
    )


def _expected_labels(published, rows):
    draft = published.candidates[FAMILIES[0]].draft
    example = draft.input_example
    return example["labels"][: len(rows)]


@pytest.mark.parametrize(
    "shape",
    [
        "records",
        "dataframe_records",
        "dataframe_split",
        "instances",
        "instances_lists",
        "instances_columns",
        "bare_list",
    ],
)
@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_every_json_shape_gives_the_same_answers(client, published, shape, path):
    """Check that each accepted JSON shape predicts the sklearn labels of the example rows."""
    rows = np.asarray(published.candidates[FAMILIES[0]].draft.input_example["inputs"])
    records = [record(r) for r in rows]
    bodies = {
        "records": {"records": records},
        "dataframe_records": {"dataframe_records": records},
        "dataframe_split": {"dataframe_split": {"columns": list(FEATURES), "data": rows.tolist()}},
        "instances": {"instances": records},
        "instances_lists": {"instances": rows.tolist()},
        "instances_columns": {
            "instances": {f: rows[:, i].tolist() for i, f in enumerate(FEATURES)}
        },
        "bare_list": records,
    }
    response = _post(client, bodies[shape], path)
    assert response.status_code == 200, response.json
    labels = [p["label"] for p in response.json["predictions"]]
    assert labels == _expected_labels(published, rows)


def test_invocations_accepts_csv_with_bom_and_semicolons(client, published):
    """Check that /invocations scores a CSV body (BOM, ';' delimiter, CRLF)."""
    rows = np.asarray(published.candidates[FAMILIES[0]].draft.input_example["inputs"])
    lines = [";".join(FEATURES)] + [";".join(repr(float(v)) for v in r) for r in rows]
    body = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode()
    response = client.post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 200, response.json
    assert [p["label"] for p in response.json["predictions"]] == _expected_labels(published, rows)


def test_every_problem_is_listed_by_record_and_field(client, published):
    """Check that missing, unknown, non-numeric, null, NaN and infinite values are all reported."""
    good = record(published.inputs[0])
    bad = [
        {k: v for k, v in good.items() if k != "pelvic_tilt"},
        {**good, "colour": 1.0},
        {**good, "sacral_slope": "12.5"},
        {**good, "pelvic_radius": None},
        {**good, "lumbar_lordosis_angle": True},
        good,
    ]
    text = (
        json.dumps({"records": bad})[:-2] + ', {"pelvic_incidence": NaN, "pelvic_tilt": '
        'Infinity, "lumbar_lordosis_angle": 1, "sacral_slope": 1, "pelvic_radius": 1, '
        '"degree_spondylolisthesis": -Infinity}]}'
    )
    response = client.post("/predict", data=text, content_type="application/json")
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "INVALID_INPUT"
    found = {(d["record"], d["field"], d["problem"].split(" ")[0]) for d in error["details"]}
    assert found == {
        (0, "pelvic_tilt", "missing"),
        (1, "colour", "unknown"),
        (2, "sacral_slope", "not"),
        (3, "pelvic_radius", "null"),
        (4, "lumbar_lordosis_angle", "not"),
        (6, "pelvic_incidence", "NaN"),
        (6, "pelvic_tilt", "infinite"),
        (6, "degree_spondylolisthesis", "infinite"),
    }


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"records": []}, "empty"),
        ([], "empty"),
        ({"records": {"a": 1}}, "list of records"),
        ({"dataframe_split": {"columns": ["a"]}}, "'columns' and 'data'"),
        ({"records": [], "instances": []}, "exactly one"),
        ({"records": [[1, 2]]}, "expected 6 values"),
        ("just text", "JSON object"),
        ({"records": [7]}, "must be an object"),
    ],
)
def test_wrong_shapes_are_400(client, published, body, fragment):
    """Check that malformed shapes and empty input are refused with a 400 saying why."""
    response = _post(client, body)
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "INVALID_INPUT"
    assert fragment in error["message"] or any(
        fragment in d.get("problem", "") for d in error.get("details", [])
    )


def test_malformed_json_is_400_not_500(client, published):
    """Check that a body that is not JSON is a client error."""
    response = client.post("/predict", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "INVALID_INPUT"
    assert "malformed JSON" in response.json["error"]["message"]


@pytest.mark.parametrize(
    "content_type, path",
    [
        ("text/plain", "/predict"),
        ("text/csv", "/predict"),
        ("application/xml", "/invocations"),
        (None, "/predict"),
    ],
)
def test_wrong_content_type_is_415(client, published, content_type, path):
    """Check that bodies other than JSON (and CSV on /invocations) are refused with 415."""
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post(path, data="pelvic_tilt,1", **kwargs)
    assert response.status_code == 415
    assert response.json["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"


def test_more_records_than_the_limit_is_413(published, mongo_client):
    """Check that max_records bounds one request, with 413 naming the limit."""
    app = make_app(with_api(published.settings, max_records=3), mongo_client)
    rows = [record(r) for r in published.inputs[:4]]
    response = _post(app.test_client(), {"records": rows})
    assert response.status_code == 413
    assert response.json["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "limit is 3" in response.json["error"]["message"]
    assert _post(app.test_client(), {"records": rows[:3]}).status_code == 200


def test_body_over_the_upload_limit_is_413(published, mongo_client):
    """Check that a body larger than max_upload_mb is refused before it is parsed."""
    app = make_app(with_api(published.settings, max_upload_mb=1), mongo_client)
    response = app.test_client().post(
        "/predict", data=b"[" + b" " * (1024 * 1024 + 10) + b"]", content_type="application/json"
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_values_outside_the_training_range_are_served_and_flagged(client, published):
    """Check that an out-of-range value is predicted but named in out_of_range."""
    inside = record(published.inputs[0])
    outside = {**inside, "degree_spondylolisthesis": 10_000.0}
    response = _post(client, {"records": [inside, outside]})
    assert response.status_code == 200
    first, second = response.json["predictions"]
    assert first["out_of_range"] == []
    assert second["out_of_range"] == ["degree_spondylolisthesis"]


def test_no_active_version_is_503_no_active_model(published, mongo_client):
    """Check that with nothing active /predict answers 503 NO_ACTIVE_MODEL."""
    published.store.state.delete_many({})
    app = make_app(published.settings, mongo_client)
    response = _post(app.test_client(), record(published.inputs[0]))
    assert response.status_code == 503
    assert response.json["error"]["code"] == "NO_ACTIVE_MODEL"
    assert app.test_client().get("/ready").status_code == 503


def test_integer_too_large_for_a_float_is_400(client, published):
    """Check that a JSON integer with hundreds of digits is a 400 naming the field, not a 500."""
    body = {**record(published.inputs[0]), "pelvic_tilt": 10**400}
    response = client.post("/predict", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    [detail] = response.json["error"]["details"]
    assert detail["field"] == "pelvic_tilt" and "float32 range" in detail["problem"]


def _csv_body(rows, header=None, newline="\n") -> bytes:
    lines = [",".join(header or FEATURES)] + [",".join(repr(float(v)) for v in r) for r in rows]
    return (newline.join(lines) + newline).encode()


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
def test_invocations_csv_with_any_line_ending_is_scored(client, published, newline):
    """Check that CSV lines ending in CR alone (old Mac exports) score like LF and CRLF."""
    rows = published.inputs[:3]
    response = client.post(
        "/invocations", data=_csv_body(rows, newline=newline), content_type="text/csv"
    )
    assert response.status_code == 200, response.json
    assert [p["label"] for p in response.json["predictions"]] == _expected_labels(published, rows)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "where"),
    [
        (
            "/invocations",
            _csv_body([[1.0] * 7], header=[*FEATURES, FEATURES[1]]),
            "text/csv",
            "line 1",
        ),
        (
            "/predict",
            json.dumps(
                {"dataframe_split": {"columns": [*FEATURES, FEATURES[1]], "data": [[1.0] * 7]}}
            ).encode(),
            "application/json",
            "dataframe_split.columns",
        ),
    ],
)
def test_duplicate_feature_columns_are_400_naming_the_column(
    client, published, path, body, content_type, where
):
    """Check that a column given twice is refused rather than resolved as "last one wins"."""
    response = client.post(path, data=body, content_type=content_type)
    assert response.status_code == 400
    error = response.json["error"]
    assert where in error["message"] and FEATURES[1] in error["message"]
    assert error["details"][0] == {
        **error["details"][0],
        "field": FEATURES[1],
        "problem": "duplicate column",
    }


def test_csv_field_over_the_csv_module_limit_is_400_naming_the_line(client, published):
    """Check that a cell over csv.field_size_limit() characters is a 400, not a 500."""
    body = _csv_body(published.inputs[:2]) + b"1," * 5 + b"9" * 200_000 + b"\n"
    response = client.post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("line 4:")


def test_body_over_the_request_limit_is_413_naming_it(published, mongo_client):
    """Check that /predict and /invocations refuse a body over api.max_request_mb."""
    app = make_app(with_api(published.settings, max_request_mb=1), mongo_client)
    client = app.test_client()
    big = json.dumps({"records": [record(published.inputs[0])], "pad": " " * (1 << 20)})
    for path, data, kind in (
        ("/predict", big, "application/json"),
        ("/invocations", b"a" * (1 << 20) + b"a", "text/csv"),
    ):
        response = client.post(path, data=data, content_type=kind)
        assert response.status_code == 413, (path, response.json)
        assert "limit of 1 MB" in response.json["error"]["message"]


def test_csv_rows_over_the_record_limit_are_413_while_reading(published, mongo_client):
    """Check that /invocations counts CSV rows as the body arrives (the record limit)."""
    app = make_app(with_api(published.settings, max_records=3), mongo_client)
    body = _csv_body(np.repeat(published.inputs[:1], 4, axis=0), newline="\r")
    response = app.test_client().post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 413
    assert "the limit is 3" in response.json["error"]["message"]


def test_json_with_more_values_than_the_records_allowed_is_413(published, mongo_client):
    """Check that empty arrays by the million are refused before they are parsed."""
    app = make_app(with_api(published.settings, max_records=10), mongo_client)
    body = b'{"records": [' + b",".join([b"[]"] * 1000) + b"]}"
    response = app.test_client().post("/predict", data=body, content_type="application/json")
    assert response.status_code == 413
    assert "the limit is 10 records" in response.json["error"]["message"]
