"""MLflow's Model Registry as a mirror of the registry; MongoDB stays the truth.

For each registry name MLflow holds a registered model of that name (tag
``registry_database``), one model version per ready registry version (``source`` its
``gridfs:///<database>/<name>/<version>`` URI, ``run_id`` its run, tags ``registry_version``,
``sha256``, ``model_family`` and the test metrics) and the alias ``mlflow.alias``
(``production``) on the active version. :meth:`Mirror.reconcile` compares the two sides and,
unless ``dry_run``, writes MLflow to match: it creates missing versions, removes those of
deleted registry versions, and moves the alias. ``bridge sync`` calls it; so does every
registry change (publish, delete) through :meth:`Mirror.after_change`, which never raises:
the registry change is done, and an MLflow failure becomes one warning saying how to
repair. Activate and rollback reconcile before their switch (:meth:`Mirror.before_switch`)
and only move the alias in it (:class:`AliasMove`), with the same one warning.

MLflow numbers versions itself. When other versions were registered under the name, its
numbers differ from the registry's: the ``registry_version`` tag says which is which, and a
``registry_note`` tag spells it out. Nothing here reads a number across the two sides.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from pymongo.database import Database

from conf.settings import MlflowSettings, Settings
from pipelines.tracking import sqlite_path
from registry_bridge.entities import ActiveState, ModelVersion
from registry_bridge.errors import first_line

log = logging.getLogger(__name__)

TAG_DATABASE, TAG_VERSION, TAG_SHA256 = "registry_database", "registry_version", "sha256"
TAG_NOTE = "registry_note"
SCHEME = "gridfs"  # registry_bridge.mlflow_plugin reads it
# An MLflow tracking server that does not answer should cost one short wait, not minutes.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class RegistryReader(Protocol):
    """What the mirror reads of the registry: a ``ModelStore`` (which creates the mirror and
    imports this module, so this module names the three members it uses instead)."""

    db: Database

    def search_model_versions(
        self, name: str | None = None, include_deleted: bool = False
    ) -> list[ModelVersion]: ...

    def get_active_version(self, name: str) -> ActiveState | None: ...


def version_uri(database: str, name: str, version: int) -> str:
    """``gridfs:///<database>/<name>/<version>``: where MLflow finds a registry version.

    No host and no credentials: MLflow stores the URI and shows it; the plugin connects
    with ``MONGODB_URI``/the settings.
    """
    return f"{SCHEME}:///{quote(database, safe='')}/{quote(name, safe='')}/{int(version)}"


@dataclass
class MirrorReport:
    """How MLflow's side of one name compares with the registry, and what was written."""

    name: str
    alias: str
    versions: dict[int, str] = field(default_factory=dict)  # registry -> MLflow version
    missing: list[int] = field(default_factory=list)  # registry versions not in MLflow
    stale: list[str] = field(default_factory=list)  # MLflow versions of deleted ones
    foreign: list[str] = field(default_factory=list)  # MLflow versions not from this registry
    alias_was: str | None = None  # the MLflow version the alias named
    alias_target: str | None = None  # the one it must name (the active version's)
    applied: bool = False  # True: MLflow was changed to match
    problem: str | None = None  # a conflict sync does not resolve

    @property
    def in_sync(self) -> bool:
        """True when MLflow already matched the registry (before any change made here)."""
        return (
            not self.missing
            and not self.stale
            and self.alias_was == self.alias_target
            and self.problem is None
        )

    def describe(self) -> str:
        """One line: in sync, or what differs (and, after a sync, what was repaired)."""
        if self.problem:
            return f"MLflow mirror of {self.name!r}: {self.problem}"
        alias = (
            f"@{self.alias} -> MLflow v{self.alias_target}"
            + (f" (registry v{self._registry_of(self.alias_target)})" if self.alias_target else "")
            if self.alias_target
            else f"no @{self.alias} (nothing active)"
        )
        drift = []
        if self.missing:
            drift.append(f"registry v{', v'.join(map(str, self.missing))} not in MLflow")
        if self.stale:
            drift.append(f"MLflow v{', v'.join(self.stale)} of deleted registry versions")
        if self.alias_was != self.alias_target:
            drift.append(f"@{self.alias} on MLflow v{self.alias_was or ' none'}")
        notes = ""
        if self.foreign:
            notes = (
                f"; MLflow v{', v'.join(self.foreign)} not published by bridge, so MLflow's "
                f"numbers differ from the registry's (tag {TAG_VERSION} says which is which)"
            )
        if not drift:
            return f"MLflow mirror of {self.name!r}: in sync, {alias}{notes}"
        if self.applied:
            return f"MLflow mirror of {self.name!r}: repaired ({'; '.join(drift)}), {alias}{notes}"
        return (
            f"MLflow mirror of {self.name!r}: out of sync ({'; '.join(drift)}); "
            f"run `bridge sync --name {self.name}`{notes}"
        )

    def _registry_of(self, mlflow_version: str | None) -> int | None:
        return next((r for r, m in self.versions.items() if m == mlflow_version), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus ``in_sync`` and the one-line description."""
        body = asdict(self)
        body["versions"] = {str(k): v for k, v in self.versions.items()}
        return {**body, "in_sync": self.in_sync, "summary": self.describe()}


@dataclass(frozen=True)
class AliasMove:
    """The switch's share of the mirror, prepared by :meth:`Mirror.before_switch`."""

    mirror: Mirror
    name: str
    mlflow_version: str | None  # the target's MLflow version; None when ``problem`` says why
    problem: str | None

    def apply(self, action: str) -> None:
        """Move the alias to the target (one MLflow write); a failure is one warning."""
        reason = self.problem
        if reason is None:
            try:
                client = self.mirror.client
                client.set_registered_model_alias(self.name, self.mirror.alias, self.mlflow_version)
                log.info(
                    "MLflow mirror of %r: @%s on MLflow v%s",
                    self.name,
                    self.mirror.alias,
                    self.mlflow_version,
                )
                return
            except Exception as exc:  # MLflow, SQLAlchemy, HTTP: the registry change stands
                reason = first_line(exc)
        self.mirror.warn_not_updated(action, self.name, reason)


class Mirror:
    """Writes the registry's state into MLflow's Model Registry (MLflow imported on first use)."""

    def __init__(self, settings: MlflowSettings):
        self.settings = settings
        self.alias = settings.alias
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Mirror | None:
        """The mirror, or None when ``mlflow.mirror`` is off."""
        return cls(settings.mlflow) if settings.mlflow.mirror else None

    @property
    def client(self) -> Any:
        """An ``MlflowClient`` on the tracking store (its Model Registry is the same store)."""
        if self._client is None:
            for key, value in _HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
            from mlflow.tracking import MlflowClient

            uri = self.settings.tracking_uri
            self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._client

    def store_missing(self) -> str | None:
        """Why there is nothing to mirror into: a SQLite tracking store not created yet."""
        path = sqlite_path(self.settings.tracking_uri)
        if path is not None and not path.exists():
            return f"the MLflow tracking store {path} does not exist yet (train first)"
        return None

    def after_change(self, store: RegistryReader, name: str, action: str) -> MirrorReport | None:
        """Reconcile ``name`` after a registry change; a failure is one warning, never raised."""
        report, reason = self._reconciled(store, name)
        if reason is None:
            return report
        self.warn_not_updated(action, name, reason)
        return None

    def before_switch(self, store: RegistryReader, name: str, version: int) -> AliasMove:
        """Before an activation moves the pointer to ``version``: reconcile ``name`` (the alias
        still on the current version), so that the switch itself is one alias write.

        The first reconcile in a process imports MLflow and opens its store, about 2 s of
        CPU; inside the switch it stalled the answering worker's requests (bench.activation
        measured 28x the steady p99). A failure here is kept for the switch to report once:
        an unreachable MLflow costs one wait, not two.
        """
        report, reason = self._reconciled(store, name)
        target = report.versions.get(version) if report is not None else None
        if reason is None and target is None:  # deleted meanwhile: the activation will fail
            reason = f"registry v{version} has no MLflow version"
        return AliasMove(self, name, target, reason)

    def warn_not_updated(self, action: str, name: str, reason: str) -> None:
        """The one warning of a registry change MLflow did not follow."""
        log.warning(
            "%s of %r is done in the registry, but MLflow's Model Registry was not updated: "
            "%s; repair with `bridge sync --name %s`",
            action,
            name,
            reason,
            name,
        )

    def _reconciled(
        self, store: RegistryReader, name: str
    ) -> tuple[MirrorReport | None, str | None]:
        """The reconcile's report, or why there is none (the registry change stands)."""
        reason = self.store_missing()
        if reason is not None:
            return None, reason
        try:
            report = self.reconcile(store, name)
        except Exception as exc:  # MLflow, SQLAlchemy, HTTP: the registry change stands
            return None, first_line(exc)
        return report, report.problem

    def status(self, store: RegistryReader, name: str) -> MirrorReport:
        """What ``bridge list``/``show`` say: a dry run; an MLflow failure becomes ``problem``."""
        reason = self.store_missing()
        if reason is None:
            try:
                return self.reconcile(store, name, dry_run=True)
            except Exception as exc:  # MLflow, SQLAlchemy, HTTP: report, do not fail the listing
                reason = "MLflow could not be read: " + first_line(exc)
        return MirrorReport(name, self.alias, problem=f"{reason}; `bridge sync` repairs it")

    def reconcile(self, store: RegistryReader, name: str, dry_run: bool = False) -> MirrorReport:
        """Compare MLflow's side of ``name`` with the registry; unless dry_run, make it match.

        Raises:
            MlflowException (or the tracking store's own errors) when MLflow fails.
        """
        from mlflow.exceptions import MlflowException

        client = self.client
        database = store.db.name
        report = MirrorReport(name, self.alias)
        ready = {v.version: v for v in store.search_model_versions(name)}
        active = store.get_active_version(name)
        try:
            registered = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            registered = None
        if registered is not None:
            owner = registered.tags.get(TAG_DATABASE)
            if owner not in (None, database):
                report.problem = (
                    f"MLflow's registered model {name!r} mirrors registry database {owner!r}, "
                    f"not {database!r}; not touched (use another model name or MLflow store)"
                )
                return report
        elif not ready:
            return report  # nothing published, nothing to mirror
        ours: dict[int, Any] = {}
        for mv in self._versions(name) if registered is not None else []:
            tags = mv.tags or {}
            number = tags.get(TAG_VERSION, "")
            if tags.get(TAG_DATABASE) != database or not number.isdigit():
                report.foreign.append(str(mv.version))
            elif int(number) in ready and tags.get(TAG_SHA256) == ready[int(number)].sha256:
                ours[int(number)] = mv
            else:
                report.stale.append(str(mv.version))
        report.missing = sorted(set(ready) - set(ours))
        was = (registered.aliases or {}).get(self.alias) if registered else None
        report.alias_was = None if was is None else str(was)
        report.versions = {number: str(mv.version) for number, mv in ours.items()}
        if not dry_run:
            if registered is None:
                self._create_registered_model(name, database)
            for number in report.missing:
                report.versions[number] = self._create_version(ready[number], database)
            for mlflow_version in report.stale:
                client.delete_model_version(name, mlflow_version)
        report.versions = dict(sorted(report.versions.items()))
        if active is not None and active.active_version is not None:
            # Dry run: a missing active version has no MLflow number yet ("?").
            report.alias_target = report.versions.get(active.active_version, "?")
        if not dry_run and report.alias_was != report.alias_target:
            if report.alias_target is None:
                client.delete_registered_model_alias(name, self.alias)
            else:
                client.set_registered_model_alias(name, self.alias, report.alias_target)
        report.applied = not dry_run and not report.in_sync
        if report.applied:
            log.info("%s", report.describe())
        return report

    def _versions(self, name: str) -> list[Any]:
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        return list(self.client.search_model_versions(f"name = '{escaped}'", max_results=10000))

    def _create_registered_model(self, name: str, database: str) -> None:
        self.client.create_registered_model(
            name,
            tags={TAG_DATABASE: database, "mirrored_by": "bridge"},
            description=(
                f"Mirror of the model {name!r} of the MongoDB registry database {database!r}. "
                "MongoDB is the truth: publish, activate and roll back with `bridge`; "
                f"`bridge sync --name {name}` repairs this mirror. The alias @{self.alias} "
                "names the version the API serves."
            ),
        )

    def _create_version(self, version: ModelVersion, database: str) -> str:
        tags = {
            TAG_DATABASE: database,
            TAG_VERSION: str(version.version),
            TAG_SHA256: version.sha256,
            "registry_name": version.name,
        }
        if version.model_family:
            tags["model_family"] = version.model_family
        tags.update({k: f"{v:.6g}" for k, v in version.metrics.items() if k.startswith("test_")})
        created = self.client.create_model_version(
            version.name,
            version_uri(database, version.name, version.version),
            run_id=version.run_id,
            tags=tags,
            description=f"Registry version {version.version} of {version.name!r} "
            f"(database {database!r}), sha256 {version.sha256}.",
        )
        if str(created.version) != str(version.version):
            self.client.set_model_version_tag(
                version.name,
                created.version,
                TAG_NOTE,
                f"MLflow version {created.version} is registry version {version.version}",
            )
        return str(created.version)
