"""The inference API: ``create_app`` builds the Flask app serving the active model version.

One ``MongoClient`` per process (it pools and is thread-safe) is opened here and kept
on the app with the store and the active-version resolver; the server's workers each call
``create_app`` after forking, so no client crosses a fork.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, g, request
from flask.json.provider import DefaultJSONProvider
from pymongo import MongoClient

from conf.settings import Settings, load_settings

if TYPE_CHECKING:  # for the types only: importing ``api`` stays cheap (create_app imports)
    from api.active import ActiveModel
    from api.hosts import SiteCheck
    from api.served import ActiveModels
    from registry_bridge.store import ModelStore

log = logging.getLogger(__name__)

EXTENSION = "vertebral"


@dataclass
class Registry:
    """What the app shares between requests: the client, the store and the resolvers
    (``active``: the default name's, that of /predict; ``models``: every served name's)."""

    client: MongoClient
    store: ModelStore
    settings: Settings
    models: ActiveModels

    @property
    def active(self) -> ActiveModel:
        """The default name's resolver (``/predict``'s)."""
        return self.models.default


def registry() -> Registry:
    """The current app's registry handle."""
    return current_app.extensions[EXTENSION]


def _open_client(settings: Settings) -> MongoClient:
    """The process's client; an unreachable database at start-up is not fatal (/ready says 503)."""
    from registry_bridge import database
    from registry_bridge.errors import RegistryError

    try:
        return database.connect(settings.registry)
    except RegistryError as exc:
        log.warning("starting without the registry database: %s", exc)
        return MongoClient(
            database.resolve_uri(settings.registry, start=False),
            serverSelectionTimeoutMS=settings.registry.timeout_ms,
            connectTimeoutMS=settings.registry.timeout_ms,
            tz_aware=True,
        )


class _InModelOrder(DefaultJSONProvider):
    """Flask's JSON, keeping class and field order as the model gives them."""

    sort_keys = False


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app.

    Args:
        test_config: Flask config overrides; ``SETTINGS`` (a :class:`Settings`) replaces
            ``load_settings()``, ``MONGO_CLIENT`` an existing client to share.
    """
    from api import errors, feedback, fleet, models, monitoring, oip, ops, predict
    from api.capture import EXTENSION as CAPTURE
    from api.capture import Capture
    from api.fast import FastPredict
    from api.hosts import SiteCheck
    from api.report_cache import EXTENSION as REPORTS
    from api.report_cache import ReportCache
    from api.served import ActiveModels
    from registry_bridge.store import ModelStore

    app = Flask(__name__)
    test_config = dict(test_config or {})
    settings: Settings = test_config.pop("SETTINGS", None) or load_settings()
    client: MongoClient | None = test_config.pop("MONGO_CLIENT", None)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=settings.api.max_upload_mb * 1024 * 1024,
        # The form-memory limit only applies to non-file multipart fields.
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
    )
    app.config.update(test_config)
    app.json = _InModelOrder(app)

    client = client or _open_client(settings)
    store = ModelStore(client, settings, ensure_indexes=False)
    served = ActiveModels(
        store, settings.api.model_name, settings.api.models, settings.api.max_loaded_versions
    )
    app.extensions[EXTENSION] = Registry(client, store, settings, served)
    capture = app.extensions[CAPTURE] = Capture(
        client[settings.registry.database], settings.capture, settings.api.workers
    )

    app.extensions[REPORTS] = ReportCache()
    errors.init_app(app)
    app.register_blueprint(predict.bp)
    app.register_blueprint(models.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(monitoring.bp)
    app.register_blueprint(fleet.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(oip.bp)  # the Open Inference Protocol (/v2)
    if not app.testing:  # a server's worker: report to the fleet (tests drive Heartbeat)
        fleet.Heartbeat(store, served, settings.api.port).start()
        if settings.webhooks.send_from_api:  # webhook deliveries, off the request path
            _start_webhook_sender(store, settings)
    check = SiteCheck(settings.api)
    _init_site_check(app, check)
    if not app.testing:
        from api import observe

        observe.log_off_the_request_path()
    _init_request_hooks(app)
    # Outermost: the usual /predict is answered before Flask's machinery (api/fast.py).
    fast = FastPredict(app.wsgi_app, app.extensions[EXTENSION], capture, check, app.json.dumps)
    app.wsgi_app = fast  # type: ignore[method-assign]
    return app


def _start_webhook_sender(store: ModelStore, settings: Settings) -> None:
    """A daemon thread sending this worker's share of webhook deliveries (stopped on exit)."""
    from api.exit_hooks import on_exit, time_left
    from registry_bridge.webhook_sender import Sender

    sender = Sender(store.db, settings.webhooks).start()
    # A POST under way is not waited for past the worker's exit budget: its delivery is
    # sent again by another sender once its lease ends (at least once, docs/webhooks.md).
    on_exit(lambda: sender.stop(time_left(2.0)), signal=sender.signal_stop)


def _init_site_check(app: Flask, check: SiteCheck) -> None:
    """Answer only requests whose Host names this API (DNS rebinding), and refuse writes
    a page of another site makes a browser send (CSRF); see api.hosts."""

    @app.before_request
    def _check_site() -> None:
        refusal = check.refusal(
            request.method,
            request.headers.get("Host", ""),
            request.headers.get("Origin"),
            request.headers.get("Sec-Fetch-Site"),
        )
        if refusal is not None:
            raise refusal


def _init_request_hooks(app: Flask) -> None:
    from api import observe

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Any) -> Any:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        served = g.get("served")
        for name, value in observe.answer_headers(served):
            response.headers[name] = value
        observe.observe(
            rule,
            request.method,
            response.status_code,
            elapsed,
            served,
            request.path,
            request.remote_addr,
        )
        return response
