"""Small real ONNX models and drafts for registry tests, plus a way to corrupt stored bytes.

The models are LogisticRegressions on random data converted with skl2onnx exactly as
the run contract says (input ``input``, outputs ``label`` and ``probabilities``,
zipmap off), so they load and score in onnxruntime like published models do.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

import gridfs
import numpy as np
from bson import ObjectId
from pymongo.database import Database
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from conf.contract import FEATURES, ONNX_INPUT, ONNX_IO
from registry_bridge.entities import ModelVersionDraft
from registry_bridge.onnx_check import input_example

CLASSES = ["Hernia", "Normal", "Spondylolisthesis"]


@functools.lru_cache(maxsize=8)
def onnx_model(seed: int = 0) -> tuple[bytes, dict[str, Any]]:
    """(ONNX bytes, evaluation block) of a small 3-class model; differs per seed."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(90, 6)).astype(np.float32)
    labels = np.array(CLASSES)[rng.integers(0, 3, 90)]
    model = LogisticRegression(max_iter=500).fit(features, labels)
    proto = to_onnx(
        model,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, len(FEATURES)]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    evaluation = {
        "inputs": features[:12].tolist(),
        "labels": [str(x) for x in model.predict(features[:12])],
        "probabilities": model.predict_proba(features[:12]).tolist(),
    }
    return proto.SerializeToString(), evaluation


def draft(
    name: str = "vertebral-column", run_id: str | None = "run-1", seed: int = 0, **changes: Any
) -> tuple[ModelVersionDraft, bytes]:
    """A draft as publish.py would build it, and the artifact it describes."""
    artifact, evaluation = onnx_model(seed)
    fields: dict[str, Any] = dict(
        name=name,
        run_id=run_id,
        experiment_id="1",
        source=f"models:/m-{run_id}",
        model_family="logistic_regression",
        params={"lr_C": "1.0"},
        metrics={
            "cv_f1_macro_mean": 0.8 + seed / 1000,
            "test_f1_macro": 0.75 + seed / 1000,
            "test_accuracy": 0.8,
        },
        classes=list(CLASSES),
        input_schema=[{"name": f, "dtype": "float64", "min": -3.0, "max": 3.0} for f in FEATURES],
        data_fingerprint="f" * 64,
        library_versions={"onnxruntime": "1.0", "skl2onnx": "1.0"},
        onnx_io=dict(ONNX_IO),
        input_example=input_example(evaluation),
        variant="3C",
        created_by="tester",
    )
    fields.update(changes)
    return ModelVersionDraft(**fields), artifact


def file_ids(db: Database, bucket: str = "models") -> set[str]:
    """Ids of the GridFS files of ``db``'s bucket (each confirmed by a read by _id)."""
    files = db[f"{bucket}.files"]
    listed = [doc["_id"] for doc in files.find({}, {"_id": 1})]
    # The embedded server may list other databases' files: keep those readable here.
    return {str(i) for i in listed if files.find_one({"_id": i}, {"_id": 1}) is not None}


def tamper_first_chunk(db: Database, file_id: str, server: Any, bucket: str = "models") -> bytes:
    """Flip the first byte of a stored artifact's first chunk; returns what GridFS now gives.

    On MongoDB the chunk is changed through ``<bucket>.chunks`` like any document. The
    embedded server ignores writes to that collection (docs/embedded-mongo.md), so
    there the same byte is changed in its SQLite file.
    """
    oid = ObjectId(file_id)
    grid = gridfs.GridFSBucket(db, bucket_name=bucket)
    before = grid.open_download_stream(oid).read()
    chunk = db[f"{bucket}.chunks"].find_one({"files_id": oid, "n": 0})
    assert chunk is not None, "GridFS chunk 0 not found"
    corrupted = bytes([chunk["data"][0] ^ 0xFF]) + bytes(chunk["data"][1:])
    db[f"{bucket}.chunks"].update_one({"files_id": oid, "n": 0}, {"$set": {"data": corrupted}})
    after = grid.open_download_stream(oid).read()
    if after == before and server.kind == "embedded":
        _tamper_sqlite(Path(server.data_dir) / f"{db.name}.db", bucket, file_id, corrupted)
        after = grid.open_download_stream(oid).read()
    assert after != before, "tampering did not change what GridFS returns"
    return after


def _tamper_sqlite(path: Path, bucket: str, file_id: str, data: bytes) -> None:
    with sqlite3.connect(path) as conn:
        row = conn.execute(f"SELECT id FROM {bucket}_files WHERE _id = ?", (file_id,)).fetchone()
        assert row is not None, f"file {file_id} not found in {path}"
        conn.execute(
            f"UPDATE {bucket}_chunks SET data = ? WHERE files_id = ? AND n = 0", (data, row[0])
        )
