"""The hot path of JSON scoring: a well-formed request answered without Flask's machinery.

Why: under load a worker's CPU is the limit, and for one record Flask's request
machinery (context push and pop, URL matching, context-local proxies, hooks, the
response object) cost more than validating and scoring the record: in process, a
single-record ``/predict`` took ~320 µs through Flask against ~67 µs for a Flask view
returning a constant (bench/online's ceiling), and cProfile put most of the difference
outside the model.

Still needed under granian (issue 23): the event loop answers ``/predict`` inline
(api/front.py), so the same CPU cost is the limit. In process, alternated rounds of 3,000
calls, two runs: a median of 116-132 µs per request here against 338-440 µs through the
Flask app (the same record and model), 2.9-3.3x.

It does what the Flask view does, with the same functions: the Host check, the body
and record limits, the JSON rules (``api/validation.py``), :func:`api.predict.score`,
capture, the request metrics, the access log and the ``X-Worker-Pid``/``X-Model-*``
headers (``api/observe.py``), and it serializes with the app's JSON provider, so the
answer is byte for byte the view's. Everything else is handed to the Flask app,
untouched but for the body (replayed from memory when it was read): another path or
method, another media type, a body without Content-Length or over the limit, a stale
version, and every error. Errors therefore have one implementation, the Flask one; the fast path
only ever answers 200.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from api import Registry
from api.active import ActiveModel, routing_key
from api.capture import REQUEST_ID_HEADER, Capture
from api.capture import request_id as new_request_id
from api.hosts import SiteCheck
from api.observe import answer_headers, observe, predicted
from api.oip import respond
from api.predict import JSON_TYPES, RESOLVED, score
from api.shadow import offer as shadow_offer
from api.validation import check_count, check_json_size, extract_records, parse_json

# The JSON scoring routes this path answers: (Flask's rule, the endpoint label of the
# metrics; capture's source; whether the body is an OIP inference request).
_ROUTES = re.compile(
    r"/(?P<native>predict|invocations)"
    r"|/models/(?P<name>[^/]+)/predict"
    r"|/v2/models/(?P<oip>[^/]+)/infer"
)
_NATIVE = {"predict": ("/predict", "predict"), "invocations": ("/invocations", "invocations")}
_NAMED = ("/models/<name>/predict", "predict")
_OIP = ("/v2/models/<name>/infer", "infer")
# OIP's binary tensor extension: refused, by the Flask view (api/oip.py).
_BINARY = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Route:
    """A request this path may answer: which model, and how the view would label it."""

    rule: str  # Flask's url_rule: the endpoint label of the request metrics
    source: str  # capture's ``source``, as the view records it
    name: str | None  # None: the default name (MODEL_NAME)
    oip: bool


# route() runs twice per request (api/front.py decides where to answer, then here): the
# two default paths skip the regular expression.
_DEFAULT_ROUTES = {
    f"/{native}": Route(*_NATIVE[native], None, False) for native in ("predict", "invocations")
}


def route(path: str) -> Route | None:
    """The scoring route of ``path`` (None: not one this path answers)."""
    known = _DEFAULT_ROUTES.get(path)
    if known is not None:
        return known
    found = _ROUTES.fullmatch(path)
    if found is None:
        return None
    native, name, oip = found.group("native", "name", "oip")
    if native is not None:
        return Route(*_NATIVE[native], None, False)
    if name is not None:
        return Route(*_NAMED, name, False)
    return Route(*_OIP, oip, True)


class FastPredict:
    """WSGI middleware answering the usual JSON scoring requests (``/predict``,
    ``/invocations``, ``/models/<name>/predict``, OIP ``infer``); the Flask app answers the rest."""

    # The app's request hooks, each with what this path does in its place. A hook added
    # to the app and not here fails tests/test_fast_path.py: this path would skip it.
    HOOKS = {
        "_check_site": "the same SiteCheck; a refused request is handed to the app",
        "_start_timer": "time.perf_counter() at the start of __call__",
        "_finish": "observe.answer_headers and observe.observe on the answer",
    }

    def __init__(
        self,
        app: WsgiApp,
        registry: Registry,
        capture: Capture,
        check: SiteCheck,
        dumps: Callable[..., str],
    ):
        self.app = app
        self.registry = registry
        self.capture = capture
        self.check = check
        self.dumps = dumps
        api = registry.settings.api
        self.body_limit = min(api.max_request_mb, api.max_upload_mb) * 1024 * 1024
        self.max_records = api.max_records

    def resolver(self, path: str) -> ActiveModel | None:
        """The resolver a POST to ``path`` would be answered with here, found without I/O
        (None: not a route of this path, or a name no request has asked yet)."""
        found = route(path)
        if found is None:
            return None
        models = self.registry.models
        return models.default if found.name is None else models.peek(found.name)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        found = route(environ.get("PATH_INFO", ""))
        if found is None or (found.oip and _BINARY in environ):
            return self.app(environ, start_response)
        started = time.perf_counter()
        length = self._length(environ)
        if length is None:
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(length)
        try:
            answer = self._answer(found, environ, body, length, started)
        except Exception:  # RegistryError or not: the Flask app answers it, as always
            answer = None
        if answer is None:
            environ["wsgi.input"] = io.BytesIO(body)  # the body, read again by the view
            return self.app(environ, start_response)
        start_response("200 OK", answer[0])
        return [answer[1]]

    def _length(self, environ: dict[str, Any]) -> int | None:
        """The body's length when this path may answer: JSON, a known length within the
        limit, an allowed Host; None hands the request over unread."""
        media = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if (
            media != JSON_TYPES
            or not length.isdigit()
            or int(length) > self.body_limit
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            return None
        refusal = self.check.refusal(  # the app's own check: its hook answers a refusal
            "POST",
            environ.get("HTTP_HOST", ""),
            environ.get("HTTP_ORIGIN"),
            environ.get("HTTP_SEC_FETCH_SITE"),
        )
        if refusal is not None:
            return None
        return int(length)

    def _answer(
        self, found: Route, environ: dict[str, Any], body: bytes, length: int, started: float
    ) -> tuple[list[tuple[str, str]], bytes] | None:
        models = self.registry.models
        resolver = models.default if found.name is None else models.peek(found.name)
        if resolver is None:
            return None  # a name not asked before: the view finds it (or answers 404)
        resolved = resolver.resolve()
        if resolved.router is not None:  # a canary runs: its share goes to its version
            key = routing_key(environ.get("HTTP_X_REQUEST_KEY"), body)
            resolved = resolved.router.route(resolved, key)
        environ[RESOLVED] = resolved  # served by this version, whoever answers
        if resolved.stale:
            return None  # rare: the view's answer says so
        model = resolved.model
        check_json_size(body, self.max_records, len(model.schema.features))
        payload = parse_json(body, length)
        answer: Any
        request_id = None  # the native answer always names its request; OIP's when captured
        if found.oip:
            answer, scored = respond(resolver.name, model, payload, self.max_records)
        else:
            records = extract_records(payload)
            check_count(records, self.max_records)
            scored = score(model, records)
            request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID"))
            answer = {**scored.body, "request_id": request_id}
        payload = f"{self.dumps(answer, separators=(',', ':'))}\n".encode()
        headers = [
            ("Content-Type", JSON_TYPES),
            ("Content-Length", str(len(payload))),
            *answer_headers(resolved),
        ]
        capture = self.capture
        sampled = capture.sampled()
        if sampled or request_id is not None:
            request_id = request_id or new_request_id(environ.get("HTTP_X_REQUEST_ID"))
            headers.append((REQUEST_ID_HEADER, request_id))
        if sampled and request_id is not None:
            capture.record(
                found.source,
                model,
                scored.checked.matrix,
                scored.labels,
                scored.decision.probabilities,
                request_id=request_id,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        if resolved.router is not None:  # shadow traffic: a copy, scored off the request path
            shadow_offer(
                resolved,
                scored.checked.matrix,
                scored.labels,
                request_id or new_request_id(None),
                (time.perf_counter() - started) * 1000,
            )
        predicted(model, len(scored.labels))
        observe(
            found.rule,
            "POST",
            200,
            time.perf_counter() - started,
            resolved,
            environ.get("PATH_INFO", ""),
            environ.get("REMOTE_ADDR"),
        )
        return headers, payload
