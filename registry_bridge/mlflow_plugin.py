"""MLflow reads the registry: a read-only artifact repository for ``gridfs://`` and a pyfunc loader.

``gridfs:///<database>/<name>/<version>`` (the name URL-quoted) lists a valid MLflow model
directory for that version, built from its ``model_versions`` document and its GridFS file:

- ``MLmodel``: the ``onnx`` flavour and a ``python_function`` flavour whose
  ``loader_module`` is this module, the signature from the version's input schema, and the
  version's metadata;
- ``model.onnx``: the GridFS bytes, sha256-checked on every read by
  :class:`registry_bridge.artifacts.GridFSArtifacts` (a mismatch is an ``MlflowException``
  naming the version and both checksums);
- ``model_card.json``: the version document (what ``bridge show --json`` prints).

The URI never carries a host or credentials (MLflow stores it and shows it in its UI): the
connection comes from ``MONGODB_URI``/the settings, like every other part of the project.
Writing is refused: versions are published with ``bridge publish``.

Why a loader of our own: MLflow's stock ONNX pyfunc flattens every output into one column
and fails on the 2-D ``probabilities`` ("All arrays must be of the same length"). This
loader scores through the project's scoring core and returns ``prediction`` (the label),
``probability``, one ``prob_<class>`` column per class and ``model_version``, the columns
``/batch-predict`` and Spark give. Nothing is unpickled.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
import yaml
from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from conf.contract import ContractError, parse_version
from conf.settings import load_settings
from registry_bridge.entities import ModelVersion, json_safe
from registry_bridge.errors import RegistryError
from registry_bridge.mirror import SCHEME, version_uri
from registry_bridge.store import VERSIONS, ModelStore

MLMODEL, ONNX_FILE, CARD_FILE = "MLmodel", "model.onnx", "model_card.json"
FILES = (MLMODEL, ONNX_FILE, CARD_FILE)
READ_ONLY = (
    "the gridfs:// artifact repository is read-only: model versions are published with "
    "`bridge publish --run-id <run>` (or `--best`), which checks and numbers them"
)
# MLflow's error code for each registry error code.
_MLFLOW_CODES = {
    "NOT_FOUND": RESOURCE_DOES_NOT_EXIST,
    "CONFLICT": INVALID_STATE,
    "INVALID_INPUT": INVALID_PARAMETER_VALUE,
    "REGISTRY_UNAVAILABLE": TEMPORARILY_UNAVAILABLE,
}
# input_schema dtypes -> MLflow column types
_COLUMN_TYPES = {"float64": "double", "float32": "float", "int64": "long", "int32": "integer"}


def parse_uri(uri: str) -> list[str]:
    """The path segments of a gridfs URI: ``[database]``, ``[database, name]`` or
    ``[database, name, version]`` (MLflow also opens a URI's parent to fetch its last segment).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE when the URI names a host or credentials,
            has no database, or has more segments.
    """
    parts = urlsplit(uri)
    segments = [unquote(s) for s in parts.path.strip("/").split("/") if s]
    if parts.scheme != SCHEME or not 1 <= len(segments) <= 3:
        raise MlflowException(
            f"{uri!r} is not a registry URI: expected {SCHEME}:///<database>/<name>/<version>",
            error_code=INVALID_PARAMETER_VALUE,
        )
    if parts.netloc:
        raise MlflowException(
            f"a {SCHEME} URI names no host or credentials (it is stored and shown by MLflow); "
            "the connection comes from MONGODB_URI or registry.mongodb_uri",
            error_code=INVALID_PARAMETER_VALUE,
        )
    _check_database(segments[0], uri)
    if len(segments) == 3:
        _version_number(segments[2], uri)
    return segments


# What MongoDB refuses in a database name (on any platform), and its length limit in bytes.
_DATABASE_FORBIDDEN = set('/\\. "$*<>:|?\x00')
_DATABASE_MAX_BYTES = 63


def _check_database(name: str, uri: str) -> None:
    """Refuse a database segment MongoDB would refuse (the driver raises a bare InvalidName)."""
    bad = sorted({c for c in name if c in _DATABASE_FORBIDDEN or not c.isprintable()})
    if bad or len(name.encode()) > _DATABASE_MAX_BYTES:
        problem = (
            f"holds {', '.join(repr(c) for c in bad)}"
            if bad
            else f"is longer than {_DATABASE_MAX_BYTES} bytes"
        )
        raise MlflowException(
            f"{uri!r}: {name!r} is not a database name: it {problem}",
            error_code=INVALID_PARAMETER_VALUE,
        )


def _version_number(text: str, uri: str) -> int:
    try:
        return parse_version(text)  # the run contract's one rule for version numbers
    except ContractError as exc:
        raise MlflowException(f"{uri!r}: {exc}", error_code=INVALID_PARAMETER_VALUE) from None


def mlflow_error(exc: RegistryError, where: str) -> MlflowException:
    """The MlflowException for a registry error, its message kept whole (it names the version)."""
    return MlflowException(
        f"{where}: {exc.message}", error_code=_MLFLOW_CODES.get(exc.code, INTERNAL_ERROR)
    )


# --- the registry connection, one per process --------------------------------------------

_STORES: dict[tuple[str | None, str], ModelStore] = {}
_STORES_LOCK = threading.Lock()


def _store(database: str) -> ModelStore:
    """A reading ModelStore on ``database`` of the configured server (MONGODB_URI or the
    settings). Read-only in effect: no index is created, and a database without a registry
    is refused rather than touched (MongoDB creates a database on its first write).

    Raises:
        MlflowException: RESOURCE_DOES_NOT_EXIST when ``database`` holds no registry,
            TEMPORARILY_UNAVAILABLE when the server cannot be reached.
    """
    from dataclasses import replace

    from pymongo.errors import PyMongoError

    settings = load_settings()
    key = (settings.registry.mongodb_uri, database)
    where = f"{SCHEME}:///{database}"
    with _STORES_LOCK:
        found = _STORES.get(key)
        if found is None:
            registry = replace(settings.registry, database=database)
            # No MLflow mirror from inside MLflow: this store only reads.
            quiet = replace(settings.mlflow, mirror=False)
            reader = replace(settings, registry=registry, mlflow=quiet)
            try:
                store = ModelStore.from_settings(reader, ensure_indexes=False)
            except RegistryError as exc:
                raise mlflow_error(exc, where) from None
            try:
                # Listing the databases first: the embedded server creates a database on any
                # access to it, even a listing of its collections (MongoDB only on a write).
                exists = database in store.db.client.list_database_names() and (
                    VERSIONS in store.db.list_collection_names()
                )
            except PyMongoError:
                store.close()
                raise MlflowException(
                    f"{where}: cannot list the collections of the registry database",
                    error_code=TEMPORARILY_UNAVAILABLE,
                ) from None
            if not exists:
                store.close()
                raise MlflowException(
                    f"{where}: no registry in database {database!r} on the configured server "
                    "(no model_versions collection); versions are published with "
                    "`bridge publish`",
                    error_code=RESOURCE_DOES_NOT_EXIST,
                )
            found = _STORES[key] = store
        return found


# --- the model directory -----------------------------------------------------------------


def model_card(version: ModelVersion, database: str) -> dict[str, Any]:
    """The version's document as JSON values, plus where it lives (what the loader reads)."""
    card = version.to_dict()
    card["registry_database"] = database
    card["uri"] = version_uri(database, version.name, version.version)
    return card


def signature(version: ModelVersion) -> Any:
    """The MLflow signature: the input schema's columns in, the scoring core's columns out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from registry_bridge.scoring.columns import (
        MODEL_VERSION,
        PREDICTION,
        PROBABILITY,
        probability_column,
    )

    inputs = Schema(
        [
            ColSpec(_COLUMN_TYPES.get(str(c.get("dtype")), "double"), c["name"])
            for c in version.input_schema
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", PREDICTION),
            ColSpec("float", PROBABILITY),
            *(ColSpec("float", probability_column(str(c))) for c in version.classes),
            ColSpec("long", MODEL_VERSION),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def mlmodel_text(version: ModelVersion, database: str) -> str:
    """The ``MLmodel`` file of a version (the same text on every read: ids derive from it)."""
    import mlflow.pyfunc
    from mlflow.models import Model

    uri = version_uri(database, version.name, version.version)
    model = Model(
        run_id=version.run_id,
        utc_time_created=version.created_at.strftime("%Y-%m-%d %H:%M:%S.%f"),
        signature=signature(version),
        model_uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"{uri}#{version.sha256}").hex,
        metadata={
            "registry_uri": uri,
            "registry_name": version.name,
            "registry_version": version.version,
            "sha256": version.sha256,
            "model_family": version.model_family,
            "classes": list(version.classes),
            "metrics": dict(version.metrics),
        },
    )
    model.add_flavor(
        "onnx",
        onnx_version=version.library_versions.get("onnx"),
        data=ONNX_FILE,
        providers=["CPUExecutionProvider"],
        code=None,
    )
    mlflow.pyfunc.add_to_model(model, loader_module=__name__)
    return yaml.safe_dump(json_safe(model.to_dict()), sort_keys=False)


class GridFSArtifactRepository(ArtifactRepository):
    """The registry as a read-only MLflow artifact tree: ``<database>/<name>/<version>/<file>``.

    A version's URI is a model directory; its parents list names and versions, because
    MLflow fetches ``gridfs:///d/n/3`` as the entry ``3`` of ``gridfs:///d/n``.
    """

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        self.root = parse_uri(artifact_uri)
        self._versions: dict[tuple[str, int], ModelVersion] = {}

    def _resolve(self, path: str | None) -> list[str]:
        """Root segments plus ``path``'s: ``[database, name?, version?, file?]``."""
        relative = [p for p in (path or "").replace("\\", "/").split("/") if p not in ("", ".")]
        full = self.root + relative
        if ".." in relative or len(full) > 4 or (len(full) == 4 and full[3] not in FILES):
            raise MlflowException(
                f"{self.artifact_uri} has no {path!r}: a version holds {', '.join(FILES)}",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        if len(full) >= 3:
            _version_number(full[2], self.artifact_uri)
        return full

    def _model_version(self, name: str, number: str) -> ModelVersion:
        key = (name, int(number))
        if key not in self._versions:
            try:
                found = _store(self.root[0]).get_model_version(name, int(number))
            except RegistryError as exc:
                raise mlflow_error(exc, self.artifact_uri) from None
            self._versions[key] = found
        return self._versions[key]

    def _text(self, version: ModelVersion, file: str) -> str:
        if file == MLMODEL:
            return mlmodel_text(version, self.root[0])
        return json.dumps(model_card(version, self.root[0]), indent=2) + "\n"

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        """Names under a database, versions under a name, the three files under a version."""
        try:
            full = self._resolve(path)
        except MlflowException:
            return []
        prefix = "/".join(full[len(self.root) :])

        def entry(child: str, is_dir: bool, size: int | None = None) -> FileInfo:
            return FileInfo(f"{prefix}/{child}" if prefix else child, is_dir, size)

        if len(full) == 4:
            return []  # a file
        if len(full) == 3:
            version = self._model_version(full[1], full[2])
            return [
                entry(MLMODEL, False, len(self._text(version, MLMODEL).encode())),
                entry(ONNX_FILE, False, version.size_bytes),
                entry(CARD_FILE, False, len(self._text(version, CARD_FILE).encode())),
            ]
        store = _store(self.root[0])
        try:
            versions = store.search_model_versions(full[1] if len(full) == 2 else None)
        except RegistryError as exc:
            raise mlflow_error(exc, self.artifact_uri) from None
        if len(full) == 2:
            return [entry(str(v.version), True) for v in versions]
        return [entry(name, True) for name in sorted({v.name for v in versions})]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        """Write one file; ``model.onnx`` is checked against the version's sha256 while written."""
        full = self._resolve(remote_file_path)
        if len(full) != 4:
            raise MlflowException(
                f"{self.artifact_uri}: {remote_file_path!r} is not a file of a version",
                error_code=RESOURCE_DOES_NOT_EXIST,
            )
        version = self._model_version(full[1], full[2])
        if full[3] != ONNX_FILE:
            Path(local_path).write_text(self._text(version, full[3]), encoding="utf-8")
            return
        try:
            _store(self.root[0]).artifacts.download(version, Path(local_path))
        except RegistryError as exc:
            raise mlflow_error(exc, self.artifact_uri) from None

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        """Refused: the registry is written by ``bridge publish`` only."""
        raise MlflowException(READ_ONLY, error_code=PERMISSION_DENIED)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """Refused: the registry is written by ``bridge publish`` only."""
        raise MlflowException(READ_ONLY, error_code=PERMISSION_DENIED)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        """Refused: versions are deleted with ``bridge delete``."""
        raise MlflowException(
            "the gridfs:// artifact repository is read-only: delete a version with "
            "`bridge delete NAME VERSION`",
            error_code=PERMISSION_DENIED,
        )


# --- the pyfunc flavour ------------------------------------------------------------------


class RegistryModel:
    """A registry version as MLflow's pyfunc sees it: ``predict(frame)`` -> the output columns."""

    def __init__(self, model: Any):
        self.model = model  # registry_bridge.scoring.LoadedModel

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score rows of features (columns by name); INVALID_PARAMETER_VALUE names a bad one."""
        from registry_bridge.scoring import output_names, score_frame

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            scored = score_frame(self.model, frame[list(self.model.schema.features)])
        except KeyError as exc:
            raise MlflowException(
                f"missing feature column(s) {exc}; the model needs "
                f"{', '.join(self.model.schema.features)}",
                error_code=INVALID_PARAMETER_VALUE,
            ) from None
        except RegistryError as exc:
            raise mlflow_error(exc, f"{self.model.name} v{self.model.version}") from None
        outputs = [c for c in output_names(self.model.classes) if c in scored.columns]
        return scored[outputs].reset_index(drop=True)


def _load_pyfunc(path: str, model_config: Any = None) -> RegistryModel:
    """MLflow's entry for the ``python_function`` flavour: the directory the plugin listed.

    The card is the version's document, so the model is built by the one path from registry
    metadata to a scoring model (``model_from_version``) that the API and Spark use: every
    field that decides a label (a binary version's threshold *and* its positive class) is
    carried over, and MLflow's loader cannot label rows differently from ``/predict``.
    """
    from registry_bridge.scoring import model_from_version

    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    card = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))
    try:
        meta = ModelVersion.from_document(card)
    except TypeError as exc:  # a card written by another tool, or cut short
        raise MlflowException(
            f"{directory / CARD_FILE} is not a registry model card: {exc}",
            error_code=INVALID_PARAMETER_VALUE,
        ) from None
    try:
        model = model_from_version(meta, (directory / ONNX_FILE).read_bytes())
    except RegistryError as exc:
        raise mlflow_error(exc, str(directory)) from None
    return RegistryModel(model)
