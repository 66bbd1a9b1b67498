"""Reading MLflow runs and their model cards: the one way publish and monitoring reach them.

A candidate run (pipelines.candidate) logs ``registry/model_card.json``: the classes, the
input schema, the ONNX model's path and the evaluation on the test split. Publishing
reads it to build a version; monitoring reads it again to compute an older version's
baseline. MLflow failures become one :class:`RegistryError` naming what was asked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conf.contract import MODEL_CARD
from conf.settings import Settings
from registry_bridge.errors import RegistryError, first_line

CARD_KEYS = ("classes", "input_schema", "onnx", "evaluation")


def tracking_client(settings: Settings) -> Any:
    """An ``MlflowClient`` on the configured tracking store (MLflow imported on first use)."""
    from pipelines.tracking import use_tracking_store  # imports mlflow: only when needed

    return use_tracking_store(settings.mlflow)


def mlflow_error(exc: Exception, settings: Settings, what: str) -> RegistryError:
    """One RegistryError for an MLflow failure: NOT_FOUND for a missing resource."""
    code = getattr(exc, "error_code", "")
    first = first_line(exc)
    if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in first.lower():
        return RegistryError(
            "NOT_FOUND",
            f"{what} not found in the MLflow tracking store {settings.mlflow.tracking_uri}",
        )
    return RegistryError(
        "REGISTRY_UNAVAILABLE",
        f"MLflow tracking store {settings.mlflow.tracking_uri} failed on {what}: {first}",
    )


def read_card(client: Any, settings: Settings, run_id: str, destination: Path) -> dict[str, Any]:
    """The run's ``registry/model_card.json``, with the keys publishing needs checked."""
    from mlflow.exceptions import MlflowException

    destination.mkdir(parents=True)
    try:
        path = Path(client.download_artifacts(run_id, MODEL_CARD, str(destination)))
        card = json.loads(path.read_text(encoding="utf-8"))
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            "INVALID_INPUT",
            f"MLflow run {run_id} has no readable {MODEL_CARD}: {first_line(exc)}",
        ) from None
    except json.JSONDecodeError as exc:
        raise RegistryError(
            "INVALID_INPUT",
            f"MLflow run {run_id}: {MODEL_CARD} is not JSON (line {exc.lineno}: {exc.msg})",
        ) from None
    if not isinstance(card, dict):
        raise RegistryError("INVALID_INPUT", f"MLflow run {run_id}: {MODEL_CARD} is not an object")
    missing = [key for key in CARD_KEYS if not card.get(key)]
    evaluation = card.get("evaluation") or {}
    missing += [
        f"evaluation.{key}"
        for key in ("inputs", "labels", "probabilities")
        if "evaluation" not in missing and not evaluation.get(key)
    ]
    if missing:
        raise RegistryError(
            "INVALID_INPUT", f"MLflow run {run_id}: {MODEL_CARD} lacks {', '.join(missing)}"
        )
    return card
