"""A publish run in another process (concurrency tests); imports only the store, to spawn fast."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient

from conf.settings import load_settings
from registry_bridge.entities import ModelVersionDraft
from registry_bridge.store import ModelStore


def publish_in_process(uri: str, db_name: str, fields: dict[str, Any], artifact: bytes) -> int:
    """Connect afresh, publish one draft, return the version number it got."""
    settings = load_settings(env={"MONGODB_URI": uri, "REGISTRY_DB": db_name})
    client: MongoClient = MongoClient(uri, tz_aware=True)
    try:
        store = ModelStore(client, settings)
        return store.publish_model_version(ModelVersionDraft(**fields), artifact).version.version
    finally:
        client.close()
