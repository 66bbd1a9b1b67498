"""The chosen server's floor: a constant answer under granian's RSGI, with no Flask at all.

What the API's own front (api/front.py) cannot do without: it reads the body under the
same deadline (``api.client_timeout_s``'s default, 10 s), parses its JSON and answers a
constant shaped like ``/predict``'s. Anything the API costs above it is the API's own
work (routing, validation, the model, metrics, the access log, capture); anything this
endpoint costs is granian, the event loop and wrk sharing the machine. Issue 23 measured
this floor to bound what the API can reach; the online benchmark runs it in the same
rounds (``constant-rsgi``), so the p99 goal can be read against it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.constant_app import ANSWER
from conf.settings import ApiSettings

DEADLINE_S = ApiSettings().client_timeout_s  # the API's default, not a copy of it
_JSON = [("content-type", "application/json")]


async def app(scope: Any, proto: Any) -> None:
    """RSGI: ``POST`` anything: drain and parse the body, answer the constant; else health."""
    if scope.proto != "http":
        return
    if scope.method != "POST":
        proto.response_bytes(200, _JSON, b'{"status": "ok"}')
        return
    async with asyncio.timeout(DEADLINE_S):
        body = await proto()
    json.loads(body)
    proto.response_bytes(200, _JSON, ANSWER)
