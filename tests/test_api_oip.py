"""Check the Open Inference Protocol (``/v2``) with its own clients and its errors.

One real API (``python -m api``) serves a 3-class name and a 2-class name
(threshold 0.7) from one database; ``tritonclient.http`` (JSON, ``binary_data=False``)
and KServe's ``InferenceRESTClient`` (protocol v2) score through it, and every answer is
compared with the native ``/models/<name>/predict`` for the same rows. The errors are
checked in process (Flask's test client): the protocol's ``{"error": "..."}``, a 4xx,
naming the input at fault.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from api_fixtures import FAMILIES, MODEL, make_app, publish_candidates, record, with_api
from conftest import throwaway_settings
from many_models import BINARY, POSITIVE, THRESHOLD, publish_binary
from servers import ApiServer

from conf.contract import FEATURES
from registry_bridge.store import ModelStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def served(
    mongo_client: Any, mongo_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiServer, Any, Any]]:
    """One API serving MODEL (3 classes, v1 active) and BINARY (2 classes, v1 active)."""
    tmp = tmp_path_factory.mktemp("oip")
    database = f"test_{uuid.uuid4().hex[:12]}"
    settings = throwaway_settings(mongo_server.uri, database, tmp)
    store = ModelStore(mongo_client, settings)
    published = publish_candidates(store, settings)
    binary = publish_binary(store, settings)
    with ApiServer(settings, tmp, workers=1) as server:
        yield server, published, binary
    mongo_client.drop_database(database)


def _native(server: ApiServer, name: str, rows: np.ndarray) -> list[dict[str, Any]]:
    answer = requests.post(
        server.url(f"/models/{name}/predict"),
        json={"records": [record(r) for r in rows]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def _check_against_native(
    native: list[dict[str, Any]], labels: Any, probability: Any, probabilities: Any, classes: list
) -> None:
    assert [str(x.decode() if isinstance(x, bytes) else x) for x in labels] == [
        p["label"] for p in native
    ]
    assert np.allclose(probability, [p["probability"] for p in native], atol=1e-6)
    expected = [[p["probabilities"][c] for c in classes] for p in native]
    assert np.allclose(probabilities, expected, atol=1e-6)


def test_tritonclient_scores_both_models_through_one_api(served):
    """Check tritonclient.http against both names: live, ready, metadata, and infer with the
    [N, 6] tensor, answers equal to the native ones, the id echoed, the outputs asked."""
    import tritonclient.http as triton

    server, published, binary = served
    client = triton.InferenceServerClient(url=server.base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    for name, rows in ((MODEL, published.inputs[:20]), (BINARY, binary.inputs[:20])):
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert meta["inputs"][0]["shape"] == [-1, len(FEATURES)]
        assert meta["inputs"][0]["parameters"]["features"] == ",".join(FEATURES)
        classes = meta["outputs"][2]["parameters"]["classes"].split(",")
        tensor = triton.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows.astype(np.float32), binary_data=False)
        asked = [
            triton.InferRequestedOutput(o, binary_data=False)
            for o in ("label", "probability", "probabilities")
        ]
        result = client.infer(name, [tensor], outputs=asked, request_id=f"req-{name}")
        response = result.get_response()
        assert response["id"] == f"req-{name}" and response["model_name"] == name
        assert response["model_version"] == "1"
        assert result.as_numpy("probabilities").shape == (len(rows), len(classes))
        _check_against_native(
            _native(server, name, rows),
            result.as_numpy("label"),
            result.as_numpy("probability"),
            result.as_numpy("probabilities"),
            classes,
        )
        # Without outputs asked: all three; only one asked: only that one.
        every = client.infer(name, [tensor]).get_response()["outputs"]
        assert [o["name"] for o in every] == ["label", "probability", "probabilities"]
        one = client.infer(
            name, [tensor], outputs=[triton.InferRequestedOutput("label", binary_data=False)]
        )
        assert [o["name"] for o in one.get_response()["outputs"]] == ["label"]
    assert not client.is_model_ready("no-such-model")


def test_tritonclient_pins_a_version(served):
    """Check that model_version pins an inactive version: its answers, its number."""
    import tritonclient.http as triton

    server, published, _ = served
    v2 = published.versions[FAMILIES[1]]
    rows = published.inputs[:10]
    client = triton.InferenceServerClient(url=server.base.removeprefix("http://"))
    assert client.is_model_ready(MODEL, model_version=str(v2))
    tensor = triton.InferInput("x", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    result = client.infer(MODEL, [tensor], model_version=str(v2))
    assert result.get_response()["model_version"] == str(v2)
    pinned = requests.post(
        server.url(f"/models/{MODEL}/versions/{v2}/predict"),
        json={"records": [record(r) for r in rows]},
        timeout=30,
    ).json()["predictions"]
    assert list(result.as_numpy("label")) == [p["label"] for p in pinned]
    with pytest.raises(Exception, match="version=99 not found"):
        client.infer(MODEL, [tensor], model_version="99")


def test_kserve_client_scores_both_models_through_one_api(served):
    """Check KServe's InferenceRESTClient (protocol v2): the [N, 6] tensor for the 3-class
    name, one FP64 [N] input per feature (MLServer's pandas codec) for the 2-class one,
    whose probability is P(Abnormal) and label the threshold's."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    server, published, binary = served

    async def run() -> tuple[Any, Any, bool, bool]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
        try:
            live = await client.is_server_live(server.base)
            ready = await client.is_model_ready(server.base, BINARY)
            rows = published.inputs[:15]
            tensor = InferInput("input", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows, binary_data=False)
            three = await client.infer(
                server.base, InferRequest(MODEL, [tensor], request_id="k-1"), model_name=MODEL
            )
            columns = []
            for index, feature in enumerate(FEATURES):
                column = InferInput(feature, [len(binary.inputs)], "FP64")
                column.set_data_from_numpy(binary.inputs[:, index].astype(np.float64), False)
                columns.append(column)
            two = await client.infer(server.base, InferRequest(BINARY, columns), model_name=BINARY)
            return three, two, live, ready
        finally:
            await client.close()

    three, two, live, ready = asyncio.run(run())
    assert live and ready
    assert three.id == "k-1" and three.model_name == MODEL
    outputs = {o.name: o for o in three.outputs}
    classes = outputs["probabilities"].parameters["classes"].split(",")
    _check_against_native(
        _native(server, MODEL, published.inputs[:15]),
        outputs["label"].data,
        outputs["probability"].data,
        np.asarray(outputs["probabilities"].data).reshape(outputs["probabilities"].shape),
        classes,
    )
    outputs = {o.name: o for o in two.outputs}
    classes = outputs["probabilities"].parameters["classes"].split(",")
    assert classes == list(binary.classes)
    probability = np.asarray(outputs["probability"].data)
    table = np.asarray(outputs["probabilities"].data).reshape(outputs["probabilities"].shape)
    assert np.allclose(probability, table[:, classes.index(POSITIVE)], atol=1e-6)
    assert [label == POSITIVE for label in outputs["label"].data] == list(probability >= THRESHOLD)
    _check_against_native(
        _native(server, BINARY, binary.inputs), outputs["label"].data, probability, table, classes
    )


def test_v2_paths_are_in_the_openapi_spec(served):
    server, _, _ = served
    paths = requests.get(server.url("/openapi.json"), timeout=30).json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/versions/{version}/infer",
        "/models/{name}/predict",
        "/models/{name}/batch-predict",
        "/models/{name}/versions/{version}/predict",
    ):
        assert path in paths, path


# --- errors, in process ---------------------------------------------------------------


@pytest.fixture
def oip(published, mongo_client):
    return make_app(with_api(published.settings, max_records=50), mongo_client).test_client()


def _tensor(rows: list[list[Any]], name: str = "input", datatype: str = "FP32") -> dict:
    return {
        "name": name,
        "shape": [len(rows), len(rows[0]) if rows else 0],
        "datatype": datatype,
        "data": rows,
    }


def _columns(rows: np.ndarray, datatype: str = "FP64") -> list[dict[str, Any]]:
    return [
        {"name": f, "shape": [len(rows)], "datatype": datatype, "data": rows[:, i].tolist()}
        for i, f in enumerate(FEATURES)
    ]


def _infer(client, body: Any, name: str = MODEL, **kwargs: Any):
    return client.post(f"/v2/models/{name}/infer", json=body, **kwargs)


GOOD = [[60.0, 20.0, 50.0, 40.0, 110.0, 5.0]]


@pytest.mark.parametrize(
    ("body", "status", "fragments"),
    [
        ({"inputs": [_tensor([[1.0] * 5])]}, 400, ("'input'", "[n, 6]")),
        ({"inputs": [_tensor([[1.0, 2, 3, 4, 5, None]])]}, 400, ("'input' row 0", "null")),
        (
            {"inputs": [_tensor([[1.0, 2, 3, 4, 5, "6"]])]},
            400,
            ("degree_spondylolisthesis", "not a number"),
        ),
        ({"inputs": [_tensor(GOOD, datatype="BYTES")]}, 400, ("'input'", "bytes")),
        (
            {"inputs": [{**_tensor(GOOD), "shape": [2, 6]}]},
            400,
            ("'input'", "12 values", "has 6"),
        ),
        ({"inputs": [{**_tensor(GOOD), "shape": "1x6"}]}, 400, ("'input'", "shape")),
        ({"inputs": []}, 400, ("inputs",)),
        ({"instances": GOOD}, 400, ("inputs",)),
        ([1, 2], 400, ("json object",)),
        ({"inputs": [_tensor(GOOD)], "id": 7}, 400, ("'id'",)),
        (
            {"inputs": [_tensor(GOOD)], "outputs": [{"name": "score"}]},
            400,
            ("'score'", "label"),
        ),
        ({"inputs": [_tensor([[1.0] * 6] * 51)]}, 413, ("50",)),
        (
            {"inputs": [{**_tensor(GOOD), "parameters": {"binary_data_size": 24}}]},
            400,
            ("binary",),
        ),
    ],
)
def test_infer_errors_name_the_input_at_fault(oip, body, status, fragments):
    """Check that each malformed inference request is a 4xx {"error": "..."} naming it."""
    answer = _infer(oip, body)
    assert answer.status_code == status, answer.get_json()
    error = answer.get_json()["error"]
    assert isinstance(error, str)
    for fragment in fragments:
        assert fragment in error.lower(), error


def test_per_feature_inputs_errors_name_the_feature(oip, published):
    """Check the per-feature form: a missing feature, an unknown input, uneven lengths and a
    bad value are each named."""
    rows = published.inputs[:3].astype(np.float64)
    columns = _columns(rows)
    answer = _infer(oip, {"inputs": columns[:-1]})
    assert answer.status_code == 400 and "'degree_spondylolisthesis'" in answer.json["error"]
    answer = _infer(oip, {"inputs": [*columns, {**columns[0], "name": "age"}]})
    assert answer.status_code == 400 and "'age' is not a feature" in answer.json["error"]
    uneven = [{**columns[1], "shape": [2], "data": columns[1]["data"][:2]}]
    answer = _infer(oip, {"inputs": [columns[0], *uneven, *columns[2:]]})
    assert answer.status_code == 400 and "'pelvic_tilt' has 2 values" in answer.json["error"]
    bad = [{**columns[2], "data": [1.0, True, 2.0]}]  # a boolean is no feature value
    answer = _infer(oip, {"inputs": [*columns[:2], *bad, *columns[3:]]})
    assert answer.status_code == 400
    assert "input 'lumbar_lordosis_angle' element 1" in answer.json["error"]
    # Integer columns (MLServer sends whole-number columns as INT64) and [N, 1] shapes.
    ints = [
        {**c, "datatype": "INT64", "shape": [3, 1], "data": [int(v) for v in c["data"]]}
        for c in columns
    ]
    assert _infer(oip, {"inputs": ints}).status_code == 200


def test_infer_answers_as_the_native_predict(oip, published):
    """Check that the tensor and the per-feature forms give /predict's labels and
    probabilities, with X-Model-* headers, and the id echoed."""
    rows = published.inputs[:8]
    native = oip.post("/predict", json={"records": [record(r) for r in rows]}).json
    for inputs in ([_tensor(rows.tolist())], _columns(rows.astype(np.float64))):
        answer = _infer(oip, {"id": "abc", "inputs": inputs})
        assert answer.status_code == 200, answer.json
        assert answer.headers["X-Model-Name"] == MODEL and answer.headers["X-Model-Version"] == "1"
        body = answer.json
        assert body["id"] == "abc" and body["model_version"] == "1"
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"]["data"] == [p["label"] for p in native["predictions"]]
        assert outputs["probability"]["data"] == [p["probability"] for p in native["predictions"]]
        classes = outputs["probabilities"]["parameters"]["classes"].split(",")
        flat = [p["probabilities"][c] for p in native["predictions"] for c in classes]
        assert outputs["probabilities"]["data"] == flat
        assert outputs["probabilities"]["shape"] == [len(rows), len(classes)]


def test_oip_statuses_for_names_versions_and_media(oip, published):
    """Check 404 for a name not served and a missing or deleted version, 415 for another
    media type, 400 for binary tensor data; all in the protocol's error body."""
    body = {"inputs": [_tensor(GOOD)]}
    answer = _infer(oip, body, name="nope")
    assert answer.status_code == 404 and "'nope' is not served" in answer.json["error"]
    answer = oip.post(f"/v2/models/{MODEL}/versions/99/infer", json=body)
    assert answer.status_code == 404 and "version=99" in answer.json["error"]
    assert oip.get(f"/v2/models/{MODEL}/versions/99").status_code == 404
    assert oip.get("/v2/models/nope/ready").status_code == 404
    v2 = published.versions[FAMILIES[1]]
    assert oip.get(f"/v2/models/{MODEL}/versions/{v2}/ready").status_code == 200
    published.store.delete_model_version(MODEL, v2, by="tests")
    answer = oip.post(f"/v2/models/{MODEL}/versions/{v2}/infer", json=body)
    assert answer.status_code == 404 and "deleted" in answer.json["error"]
    answer = oip.post(f"/v2/models/{MODEL}/infer", data=b"a,b", content_type="text/csv")
    assert answer.status_code == 415 and "text/csv" in answer.json["error"]
    answer = oip.post(
        f"/v2/models/{MODEL}/infer",
        data=b"{}",
        headers={"Inference-Header-Content-Length": "2"},
        content_type="application/json",
    )
    assert answer.status_code == 400 and "binary" in answer.json["error"]
    # Under /v2 an unknown path or a wrong method too; elsewhere the native body is kept.
    assert oip.get("/v2/nothing").json == {"error": "no endpoint at /v2/nothing; see /openapi.json"}
    wrong = oip.get(f"/v2/models/{MODEL}/infer")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json["error"]
    assert wrong.headers["Allow"]
    native = oip.post("/models/nope/predict", json=record(published.inputs[0]))
    assert native.status_code == 404 and native.json["error"]["code"] == "NOT_FOUND"
    assert oip.get("/nothing").json["error"]["code"] == "NOT_FOUND"
    assert oip.get("/predict").json["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_server_and_model_metadata(oip, published):
    assert oip.get("/v2").json["name"] == "vertebral-registry"
    assert oip.get("/v2/health/live").json == {"live": True}
    assert oip.get("/v2/health/ready").json == {"ready": True}
    meta = oip.get(f"/v2/models/{MODEL}").json
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert [o["name"] for o in meta["outputs"]] == ["label", "probability", "probabilities"]
    assert oip.get(f"/v2/models/{MODEL}/versions/2").json["versions"] == ["2"]
    assert oip.get(f"/v2/models/{MODEL}/ready").json == {"name": MODEL, "ready": True}
