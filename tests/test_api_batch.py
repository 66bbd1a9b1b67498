"""Tests of /batch-predict: CSV dialects, pass-through columns, errors, atomic saves, size."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from api_fixtures import FAMILIES, make_app, output_dir, with_api

from conf.contract import FEATURES


def _csv(
    rows: np.ndarray,
    delimiter: str = ",",
    newline: str = "\n",
    ids: bool = True,
    bom: bool = False,
    quote: bool = False,
) -> bytes:
    header = (["id"] if ids else []) + list(FEATURES) + (["note"] if ids else [])
    lines = [delimiter.join(f'"{h}"' if quote else h for h in header)]
    for i, row in enumerate(rows):
        cells = ([f"row-{i}"] if ids else []) + [repr(float(v)) for v in row]
        if ids:
            cells.append(f'"a, b; ""quoted"" {i}"')
        lines.append(delimiter.join(cells))
    return (("\ufeff" if bom else "") + newline.join(lines) + newline).encode()


def _read(content: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)


def test_multipart_upload_keeps_order_and_columns(client, published):
    """Check that the answer keeps input order and columns, then the prediction columns."""
    rows = np.asarray(published.candidates[FAMILIES[0]].draft.input_example["inputs"])
    response = client.post(
        "/batch-predict",
        data={"file": (io.BytesIO(_csv(rows)), "in.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.data[:500]
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    table = _read(response.data)
    classes = published.candidates[FAMILIES[0]].draft.classes
    assert list(table.columns) == (
        ["id", *FEATURES, "note", "prediction", "probability"]
        + [f"prob_{c}" for c in classes]
        + ["model_version"]
    )
    assert list(table["id"]) == [f"row-{i}" for i in range(len(rows))]
    assert table["note"][2] == 'a, b; "quoted" 2'
    assert (
        list(table["prediction"]) == published.candidates[FAMILIES[0]].draft.input_example["labels"]
    )
    assert set(table["model_version"]) == {str(published.versions[FAMILIES[0]])}
    probs = table[[f"prob_{c}" for c in classes]].astype(float).to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    saved = output_dir(published.settings) / "predicciones.csv"
    assert saved.read_bytes() == response.data
    assert response.headers["X-Saved-Path"] == "predicciones.csv"  # relative to OUTPUT_DIR


@pytest.mark.parametrize(
    "dialect",
    [
        {"delimiter": ";"},
        {"newline": "\r\n"},
        {"bom": True},
        {"quote": True},
        {"delimiter": ";", "newline": "\r\n", "bom": True, "quote": True},
    ],
)
def test_csv_dialects_give_the_same_predictions(client, published, dialect):
    """Check that BOM, CRLF, quoted headers and ';' are read like plain CSV."""
    rows = published.inputs[:30]
    plain = client.post("/batch-predict", data=_csv(rows), content_type="text/csv")
    other = client.post("/batch-predict", data=_csv(rows, **dialect), content_type="text/csv")
    assert plain.status_code == other.status_code == 200, other.data[:300]
    assert _read(plain.data).equals(_read(other.data))


def test_json_summary_counts_per_class_and_job_file(client, published):
    """Check that ?format=json reports saved paths, rows, counts per class and the version."""
    rows = published.inputs
    response = client.post("/batch-predict?format=json", data=_csv(rows), content_type="text/csv")
    assert response.status_code == 200
    summary = response.json
    assert summary["rows"] == len(rows) == summary["predicted"]
    assert sum(summary["counts"].values()) == len(rows)
    assert summary["model"]["version"] == published.versions[FAMILIES[0]]
    outputs = output_dir(published.settings)
    assert summary["saved_path"] == "predicciones.csv"  # relative to OUTPUT_DIR, no server path
    job_file = outputs / summary["job_path"]
    assert job_file.parent == outputs and summary["job_path"].startswith("predicciones-")
    job = _read(job_file.read_bytes())
    assert dict(job["prediction"].value_counts()) == {
        k: v for k, v in summary["counts"].items() if v
    }
    assert (outputs / summary["saved_path"]).read_bytes() == job_file.read_bytes()


def test_missing_columns_are_named(client, published):
    """Check that absent feature columns are a 400 naming each of them."""
    data = (
        _csv(published.inputs[:3])
        .replace(b"pelvic_tilt", b"tilt")
        .replace(b"sacral_slope", b"slope")
    )
    response = client.post("/batch-predict", data=data, content_type="text/csv")
    assert response.status_code == 400
    assert "pelvic_tilt, sacral_slope" in response.json["error"]["message"]


def test_bad_cell_is_400_naming_line_and_column_and_nothing_is_saved(client, published):
    """Check that one bad cell fails the batch, names line and column, and leaves no file."""
    text = _csv(published.inputs[:5]).decode().splitlines()
    cells = text[3].split(",")
    cells[2] = "abc"  # pelvic_tilt on file line 4
    text[3] = ",".join(cells)
    response = client.post("/batch-predict", data="\n".join(text).encode(), content_type="text/csv")
    assert response.status_code == 400
    error = response.json["error"]
    assert error["message"].startswith("line 4, column pelvic_tilt")
    assert error["details"][0] == {
        "line": 4,
        "field": "pelvic_tilt",
        "value": "abc",
        "problem": "not a number ('abc')",
    }
    assert list(output_dir(published.settings).iterdir()) == []


def test_on_error_skip_keeps_the_row_with_an_error(client, published):
    """Check that ?on_error=skip keeps bad rows in place, unpredicted, with an error text."""
    text = _csv(published.inputs[:5]).decode().splitlines()
    cells = text[2].split(",")
    cells[1], cells[6] = "", "inf"
    text[2] = ",".join(cells)
    response = client.post(
        "/batch-predict?on_error=skip", data="\n".join(text).encode(), content_type="text/csv"
    )
    assert response.status_code == 200
    table = _read(response.data)
    assert len(table) == 5 and list(table.columns)[-1] == "error"
    assert table["error"][1] == "pelvic_incidence: empty; degree_spondylolisthesis: infinite"
    assert table["prediction"][1] == "" and table["probability"][1] == ""
    assert (table["error"].drop(index=1) == "").all()
    assert (table["prediction"].drop(index=1) != "").all()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"", "empty"),
        (b"\xef\xbb\xbf\r\n", "empty"),
        (",".join(FEATURES).encode() + b"\n", "no data rows"),
    ],
)
def test_empty_file_is_400(client, published, body, fragment):
    """Check that an empty file or a header alone is refused."""
    response = client.post("/batch-predict", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert fragment in response.json["error"]["message"]


def test_wrong_upload_forms_are_refused(client, published):
    """Check 415 for a JSON body, 400 for a multipart without 'file' and for bad options."""
    assert client.post("/batch-predict", json={"a": 1}).status_code == 415
    response = client.post(
        "/batch-predict", data={"other": "x"}, content_type="multipart/form-data"
    )
    assert response.status_code == 400 and "'file'" in response.json["error"]["message"]
    assert (
        client.post(
            "/batch-predict?on_error=ignore", data=b"x", content_type="text/csv"
        ).status_code
        == 400
    )


def test_upload_over_the_limit_is_413(published, mongo_client):
    """Check that a file larger than max_upload_mb is refused with 413."""
    app = make_app(with_api(published.settings, max_upload_mb=1), mongo_client)
    big = _csv(np.repeat(published.inputs, 300, axis=0))
    assert len(big) > 1024 * 1024
    response = app.test_client().post(
        "/batch-predict",
        data={"file": (io.BytesIO(big), "b.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert response.json["error"]["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.slow
def test_200k_rows_round_trip_in_order(published, mongo_client):
    """Check that 200,000 generated rows come back, same count and order, in several chunks."""
    app = make_app(with_api(published.settings, batch_chunk_rows=50_000), mongo_client)
    rng = np.random.default_rng(7)
    n = 200_000
    rows = published.inputs[rng.integers(0, len(published.inputs), n)]
    rows = rows * rng.uniform(0.95, 1.05, rows.shape).astype(np.float32)
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    frame.insert(0, "id", np.arange(n))
    body = frame.to_csv(index=False).encode()
    response = app.test_client().post(
        "/batch-predict?format=json", data=body, content_type="text/csv"
    )
    assert response.status_code == 200, response.data[:300]
    assert response.json["rows"] == n == response.json["predicted"]
    saved = output_dir(published.settings) / response.json["saved_path"]
    result = pd.read_csv(saved, usecols=["id", "prediction"])
    assert len(result) == n
    assert (result["id"].to_numpy() == np.arange(n)).all()
    assert result["prediction"].notna().all()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (",".join(FEATURES).encode() + b"\n1,2,3,4,5,6\n1,2,3,4,5,6,7,8\n", "malformed CSV"),
        (",".join(FEATURES).encode() + b"\n1,2,3,4,5,\xff\xfe\n", "not UTF-8"),
    ],
)
def test_malformed_or_undecodable_csv_is_400(client, published, body, fragment):
    """Check that a ragged row or non-UTF-8 bytes are a 400, not a 500."""
    response = client.post("/batch-predict", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert fragment in response.json["error"]["message"]


def test_invocations_csv_with_a_ragged_row_names_the_line(client, published):
    """Check that /invocations names the CSV line with the wrong number of cells."""
    body = ",".join(FEATURES) + "\n1,2,3,4,5,6\n1,2,3\n"
    response = client.post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("line 3:")


def test_output_column_names_in_the_input_are_refused(client, published):
    """Check that an input column named like an output column is a 400 naming it."""
    data = _csv(published.inputs[:3]).replace(b"note", b"prediction", 1)
    response = client.post("/batch-predict", data=data, content_type="text/csv")
    assert response.status_code == 400
    assert "prediction" in response.json["error"]["message"]


def test_cr_only_line_endings_are_read(client, published):
    """Check that a CSV whose lines end in CR alone is scored row by row, not refused."""
    rows = published.inputs[:4]
    response = client.post(
        "/batch-predict?format=json", data=_csv(rows, newline="\r"), content_type="text/csv"
    )
    assert response.status_code == 200, response.json
    assert response.json["rows"] == 4 == response.json["predicted"]


def test_header_without_a_line_break_is_400_naming_the_limit(client, published):
    """Check that a first line over MAX_HEADER_BYTES is refused before it is parsed."""
    from api.batch import MAX_HEADER_BYTES

    body = b"x" * (MAX_HEADER_BYTES + 10)
    response = client.post("/batch-predict", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert f"limit of {MAX_HEADER_BYTES} bytes" in response.json["error"]["message"]


def test_header_name_over_the_csv_field_limit_is_400(client, published):
    """Check that a header name of 200,000 characters is a 400 naming line 1, not a 500."""
    body = (",".join(FEATURES) + ",").encode() + b"n" * 200_000 + b"\n" + b"1," * 6 + b"x\n"
    response = client.post("/batch-predict", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("line 1:")


def test_duplicate_feature_column_is_400_naming_it(client, published):
    """Check that a feature column given twice in the header is refused, naming it."""
    header = [*FEATURES, FEATURES[0]]
    body = (",".join(header) + "\n" + ",".join(["1.5"] * len(header)) + "\n").encode()
    response = client.post("/batch-predict", data=body, content_type="text/csv")
    assert response.status_code == 400
    assert response.json["error"]["details"][0]["field"] == FEATURES[0]
    assert "more than once" in response.json["error"]["message"]


def test_spreadsheet_formulas_are_neutralised_but_numbers_kept(client, published):
    """Check that cells and names starting with = + - @ tab CR get a leading quote, numbers
    such as -0.25 stay as they are, and NUL bytes never reach the file."""
    row = [repr(float(v)) for v in published.inputs[0]]
    row[1] = "-0.25"
    header = ["=HYPERLINK(1)", *FEATURES, "note"]
    cells = ["@SUM(A1)", *row, '"-2+3\x00"']
    body = (",".join(header) + "\n" + ",".join(cells) + "\n").encode()
    response = client.post("/batch-predict", data=body, content_type="text/csv")
    assert response.status_code == 200, response.json
    table = _read(response.data)
    assert list(table.columns)[0] == "'=HYPERLINK(1)"
    assert table.iloc[0, 0] == "'@SUM(A1)"
    assert table[FEATURES[1]][0] == "-0.25"
    assert table["note"][0] == "'-2+3"
    assert b"\x00" not in (output_dir(published.settings) / "predicciones.csv").read_bytes()


@pytest.mark.parametrize(("retention", "kept"), [("2", 2), ("1h", 3)])
def test_output_retention_is_applied_when_a_job_ends(published, mongo_client, retention, kept):
    """Check that per-job files beyond api.output_retention (count or age) are removed."""
    import os
    import time

    from conf.settings import _retention

    settings = with_api(published.settings, output_retention=_retention(retention))
    client = make_app(settings, mongo_client).test_client()
    outputs = output_dir(settings)
    outputs.mkdir(parents=True, exist_ok=True)
    old = outputs / "predicciones-20000101T000000Z-00000000.csv"
    old.write_text("x\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    jobs = []
    for _ in range(3):
        response = client.post(
            "/batch-predict?format=json", data=_csv(published.inputs[:2]), content_type="text/csv"
        )
        assert response.status_code == 200
        jobs.append(response.json["job_path"])
    left = sorted(p.name for p in outputs.glob("predicciones-*.csv"))
    assert len(left) == kept and jobs[-1] in left and old.name not in left
    assert (outputs / "predicciones.csv").is_file()


def test_bad_cell_early_in_a_long_upload_fails_without_waiting_for_the_rest(
    published, mongo_client
):
    """Check that a 400 in the first chunk of a many-block upload leaves Arrow's read-ahead
    thread nothing to wait for: the answer comes, and the next upload is scored."""
    app = make_app(with_api(published.settings, batch_chunk_rows=1000), mongo_client)
    client = app.test_client()
    rows = np.repeat(published.inputs[:1], 200_000, axis=0)
    body = bytearray(_csv(rows, ids=False))
    at = body.index(b"\n", body.index(b"\n") + 1) + 1  # the second data row
    body[at : at + 3] = b"abc"
    response = client.post("/batch-predict", data=bytes(body), content_type="text/csv")
    assert response.status_code == 400
    assert response.json["error"]["message"].startswith("line 3, column")
    again = client.post(
        "/batch-predict?format=json", data=_csv(published.inputs[:3]), content_type="text/csv"
    )
    assert again.status_code == 200 and again.json["rows"] == 3


def test_concurrent_jobs_with_retention_one_all_get_their_own_csv(published, mongo_client):
    """Check api.output_retention: 1 under 8 concurrent uploads: every answer is 200 with
    its own rows (one job's retention removed another's file before it was sent: 500)."""
    import threading

    from conf.settings import OutputRetention

    settings = with_api(published.settings, output_retention=OutputRetention(count=1))
    app = make_app(settings, mongo_client)
    rows = published.inputs[:50]
    answers: list[tuple[int, bytes]] = []

    def upload(times: int) -> None:
        client = app.test_client()
        for _ in range(times):
            response = client.post("/batch-predict", data=_csv(rows), content_type="text/csv")
            answers.append((response.status_code, response.get_data()))

    threads = [threading.Thread(target=upload, args=(6,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [200] * 48
    assert all(len(_read(body)) == len(rows) for _, body in answers)
    assert len(list(output_dir(settings).glob("predicciones-*.csv"))) >= 1
