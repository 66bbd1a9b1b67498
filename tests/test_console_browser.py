"""The console page driven in headless Chromium (DevTools protocol) against the real API.

A user fills the form and sees a prediction, uploads a CSV and gets a download link, and
tries to activate a version without the admin token and is refused on the page.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from api_fixtures import MODEL
from servers import ApiServer

from pipelines.data import FEATURES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("chromium"), reason="headless Chromium is not installed"),
]

TOKEN = "console-test-token"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


class Page:
    """One Chromium tab spoken to over the DevTools protocol."""

    def __init__(self, socket: Any):
        self.socket = socket
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.socket.send_str(
            json.dumps({"id": self.next_id, "method": method, "params": params})
        )
        while True:
            message = json.loads((await self.socket.receive()).data)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """The first truthy value of ``expression``, polled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")


def start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    """Headless Chromium with a DevTools port; returns the process and the port's base URL."""
    process = subprocess.Popen(
        [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not marker.exists():
        time.sleep(0.1)
    assert marker.exists(), "Chromium did not open its DevTools port"
    port = marker.read_text().splitlines()[0]
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
def server(published, tmp_path):
    """The real API (``python -m api``) on the fixture's registry, with an admin token."""
    with ApiServer(published.settings, tmp_path, workers=1, env={"API_ADMIN_TOKEN": TOKEN}) as api:
        yield api


@pytest.fixture
def browser(tmp_path):
    process, devtools = start_chromium(tmp_path / "profile")
    try:
        yield devtools
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_console_predicts_uploads_and_refuses_activation_without_token(
    server, browser, published, tmp_path
):
    """Check, in a real browser: the form shows a prediction, the upload gives a download
    link to the scored CSV, activation without (or with a wrong) token is refused on the
    page and changes nothing, and nothing is stored in the browser."""
    patient = dict(zip(FEATURES, map(float, published.inputs[0]), strict=True))
    upload = tmp_path / "patients.csv"
    rows = [",".join(FEATURES)] + [",".join(f"{v:.4f}" for v in r) for r in published.inputs[:5]]
    upload.write_text("\n".join(rows) + "\n")
    downloads = tmp_path / "downloads"
    target = requests.get(f"{browser}/json/list", timeout=10).json()
    page_socket = next(t["webSocketDebuggerUrl"] for t in target if t["type"] == "page")

    async def scenario() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(page_socket, max_msg_size=0) as socket:
                page = Page(socket)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=server.url("/"))
                await page.wait_for("document.body?.dataset.ready === 'true'")
                seen: dict[str, Any] = {"title": await page.js("document.title")}

                fill = "".join(
                    f"document.querySelector('[name={name}]').value = '{value}';"
                    for name, value in patient.items()
                )
                await page.js(fill + "document.querySelector('#predict-form button').click()")
                seen["prediction"] = await page.wait_for(
                    "document.getElementById('predict-result').textContent"
                )

                document = await page.call("DOM.getDocument")
                node = await page.call(
                    "DOM.querySelector",
                    nodeId=document["root"]["nodeId"],
                    selector="#batch-form input[type=file]",
                )
                await page.call("DOM.setFileInputFiles", files=[str(upload)], nodeId=node["nodeId"])
                await page.js("document.querySelector('#batch-form button').click()")
                seen["link"] = await page.wait_for(
                    "document.getElementById('batch-download')?.href"
                )
                await page.call(
                    "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads)
                )
                await page.js("document.getElementById('batch-download').click()")
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not (downloads / "predicciones.csv").exists():
                    await asyncio.sleep(0.1)

                for token in ("", "wrong-token"):
                    await page.js("document.getElementById('admin-result').textContent = ''")
                    await page.js("document.querySelector('button[data-version]').click()")
                    await page.wait_for("document.getElementById('token-dialog').open")
                    await page.js(
                        f"document.getElementById('token-input').value = '{token}';"
                        "document.getElementById('token-ok').click()"
                    )
                    seen[f"admin:{token}"] = await page.wait_for(
                        "document.getElementById('admin-result').textContent"
                    )
                seen["token field"] = await page.js("document.getElementById('token-input').value")
                seen["stored"] = await page.js(
                    "localStorage.length + sessionStorage.length + document.cookie.length"
                )
                return seen

    seen = asyncio.run(scenario())
    assert MODEL in seen["title"]
    answer = requests.post(server.url("/predict"), json=patient, timeout=10).json()
    assert seen["prediction"].startswith(answer["predictions"][0]["label"])
    assert "by v1" in seen["prediction"]
    assert seen["link"].startswith("blob:")
    lines = (downloads / "predicciones.csv").read_text().strip().splitlines()
    assert len(lines) == 6 and lines[0].split(",")[len(FEATURES)].strip('"') == "prediction"
    assert seen["admin:"].startswith("refused: 401")
    assert seen["admin:wrong-token"].startswith("refused: 403")
    assert seen["token field"] == "" and seen["stored"] == 0
    models = requests.get(server.url(f"/models?name={MODEL}"), timeout=10).json()["models"]
    assert [m["version"] for m in models if m["active"]] == [1]
