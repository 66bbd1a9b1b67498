"""A tiny HTTP client for the demo that also records each call as a curl command."""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Exchange:
    """One request and its answer, as the report shows it."""

    title: str
    curl: str
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    """Calls the API on ``base_url`` and keeps every exchange for the report."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 120):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.exchanges: list[Exchange] = []

    def call(
        self,
        title: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        csv_file: str | None = None,
        admin: bool = False,
        record: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Exchange:
        """Send one request; returns the exchange (raises nothing on 4xx/5xx). ``headers``:
        extra ones (``X-Request-Key``...), shown in the curl command."""
        url = f"{self.base_url}{path}"
        curl = ["curl", "-s"]
        for key, value in (headers or {}).items():
            curl += ["-H", f"{key}: {value}"]
        headers = dict(headers or {})
        data: bytes | None = None
        if method != "GET":
            curl += ["-X", method]
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
            curl += ["-H", "Content-Type: application/json", "-d", json.dumps(json_body)]
        if csv_file is not None:
            with open(csv_file, "rb") as handle:
                data = handle.read()
            headers["Content-Type"] = "text/csv"
            curl += ["-H", "Content-Type: text/csv", "--data-binary", f"@{csv_file}"]
        if admin and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
            curl += ["-H", "Authorization: Bearer $API_ADMIN_TOKEN"]
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, body, answer_headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, body, answer_headers = error.code, error.read(), error.headers
        text = " ".join(shlex.quote(part) for part in curl + [url])
        text = text.replace(
            "'Authorization: Bearer $API_ADMIN_TOKEN'", '"Authorization: Bearer $API_ADMIN_TOKEN"'
        )
        exchange = Exchange(
            title,
            text,
            status,
            body.decode("utf-8", errors="replace"),
            dict(answer_headers.items()),
        )
        if record:
            self.exchanges.append(exchange)
        return exchange
