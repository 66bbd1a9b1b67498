"""Point 6: admin endpoints need the token; tokens and database passwords never leak; exposed
binds without a token are refused."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

import pytest
import requests
from api_fixtures import FAMILIES, MODEL, record
from conftest import ROOT, data_path, free_port
from servers import ApiServer, wait_until

from conf.settings import load_settings

AREA = "6 access"

pytestmark = pytest.mark.slow


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_calls_need_the_token_which_never_leaks(published, tmp_path, figure):
    """Check 401 without a token, 403 with a wrong one, 200 with the right one on activate and
    rollback, and that the token appears in no answer and no log line."""
    token = secrets.token_urlsafe(24)
    wrong = secrets.token_urlsafe(24)
    v2 = published.versions[FAMILIES[1]]
    calls = {
        "/models/activate": {"name": MODEL, "version": v2, "reason": "access test"},
        "/models/rollback": {"name": MODEL, "reason": "access test"},
    }
    seen: dict[str, list[int]] = {}
    bodies = []
    # Lease 0: the lease is not what is tested here (each 200 waited the default 250 ms).
    lease = {"api": {"pointer_lease_ms": 0}}
    with ApiServer(
        published.settings, tmp_path, env={"API_ADMIN_TOKEN": token}, config=lease
    ) as server:
        for path, body in calls.items():
            for label, headers in (
                ("none", {}),
                ("wrong", _bearer(wrong)),
                ("basic", {"Authorization": f"Basic {token}"}),
                ("right", _bearer(token)),
            ):
                answer = requests.post(server.url(path), json=body, headers=headers, timeout=30)
                seen.setdefault(path, []).append(answer.status_code)
                bodies.append(answer.text)
                if label in ("none", "basic"):
                    assert answer.status_code == 401, (path, label, answer.text)
                    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                    assert answer.json()["error"]["code"] == "UNAUTHORIZED"
                elif label == "wrong":
                    assert answer.status_code == 403, (path, answer.text)
                    assert answer.json()["error"]["code"] == "FORBIDDEN"
                else:
                    assert answer.status_code == 200, (path, answer.text)
        # Reads stay open; only changing what is served needs the token.
        assert requests.get(server.url("/models"), timeout=30).status_code == 200
        predicted = requests.post(
            server.url("/predict"),
            json=record(published.inputs[0]),
            headers=_bearer(wrong),
            timeout=30,
        )
        assert predicted.status_code == 200
        # The workers flush their last log lines: wait for the /predict just answered.
        wait_until(lambda: '"path": "/predict"' in server.log(), 10, "the /predict logged")
        log = server.log()
    figure(
        "admin calls: no / wrong / Basic / right token",
        "; ".join(f"{p} {'/'.join(map(str, s))}" for p, s in seen.items()),
        "401/403/401/200",
    )
    leaks = [
        where
        for where, text in (("log", log), *(("answer", b) for b in bodies))
        if token in text or wrong in text
    ]
    figure("answers and log lines containing a token", len(leaks), "= 0")
    assert '"path": "/models/activate"' in log, "the log holds the admin calls"
    assert not leaks


def test_database_password_never_appears_in_logs_or_answers(tmp_path, figure):
    """Check that with a password in MONGODB_URI (here an unreachable server) the API starts,
    answers 503 without the password, and logs the URI masked."""
    password = secrets.token_urlsafe(18)
    dead_port = free_port()  # nothing listens there
    uri = f"mongodb://dbuser7:{password}@127.0.0.1:{dead_port}/?authSource=admin"
    token = secrets.token_urlsafe(24)
    settings = load_settings(
        env={
            "MONGODB_URI": uri,
            "REGISTRY_DB": "secrets",
            "VERTEBRAL_DATA": str(data_path()),
            "OUTPUT_DIR": str(tmp_path / "out"),
        }
    )
    answers = []
    # Nothing listens on the port: each try is refused at once, then retried until
    # registry.timeout_ms. With the default 3 s the test waited 15 of its 19 s (the master's
    # and each worker's start, /models, activate, the workers' exit hooks), 2026-12-07;
    # the answers and log lines it checks are the same after 0.3 s.
    unreachable = {"registry": {"timeout_ms": 300}}
    with ApiServer(settings, tmp_path, env={"API_ADMIN_TOKEN": token}, config=unreachable).start(
        wait_for="/health"
    ) as server:
        for method, path, body in (
            ("GET", "/ready", None),
            ("POST", "/predict", {"a": 1}),
            ("GET", "/models", None),
            ("POST", "/models/activate", {"name": MODEL, "version": 1}),
        ):
            answer = requests.request(
                method, server.url(path), json=body, timeout=30, headers=_bearer(token)
            )
            answers.append(answer)
        log = server.log()
    statuses = [a.status_code for a in answers]
    figure("registry unreachable: /ready, /predict, /models, activate", statuses, "503 each")
    leaked = [a.url for a in answers if password in a.text] + (["log"] if password in log else [])
    figure("answers and log lines containing the DB password", len(leaked), "= 0")
    assert statuses == [503, 503, 503, 503], [a.text for a in answers]
    assert all(a.json()["error"]["code"] == "REGISTRY_UNAVAILABLE" for a in answers)
    assert f"dbuser7:***@127.0.0.1:{dead_port}" in log, "the URI is logged, masked"
    assert not leaked
    # An answer names no host, user or port of the database (the log may name the host).
    named = [
        a.url
        for a in answers
        for part in ("127.0.0.1", str(dead_port), "dbuser7")
        if part in a.text
    ]
    figure("answers naming the database host, port or user", len(named), "= 0")
    assert not named, [a.text for a in answers]


def _api_start_error(env_changes: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "API_PORT": str(free_port()), "VERTEBRAL_DATA": str(data_path())}
    env.update(env_changes)
    return subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_unescaped_password_stops_the_api_in_one_line():
    """Check that a MONGODB_URI whose password holds raw # / ? stops `python -m api` with exit 2
    and one line naming the masked URI, never any part of the password."""
    result = _api_start_error({"MONGODB_URI": "mongodb://dbuser7:Zq7#Kx9/Rt8?Pm2@127.0.0.1:1/"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "MONGODB_URI mongodb://dbuser7:***@127.0.0.1:1/ is not a valid" in result.stderr
    assert not [p for p in ("Zq7", "Kx9", "Rt8", "Pm2") if p in result.stdout + result.stderr]


def test_credentials_against_a_server_without_auth_stop_the_api_in_one_line(mongo_server):
    """Check that a user and password the server cannot check (the embedded server has no
    authentication) stop `python -m api` with exit 2 and one line, not a KeyError traceback."""
    if mongo_server.kind != "embedded":
        pytest.skip("needs a server without authentication")
    host_port = mongo_server.uri.split("://", 1)[1].split("/", 1)[0]
    result = _api_start_error({"MONGODB_URI": f"mongodb://dbuser7:Zq7Kx9@{host_port}/"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cannot log in" in result.stderr and "Traceback" not in result.stderr
    assert "Zq7Kx9" not in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_exposed_bind_without_a_token_refuses_to_start(host, figure):
    """Check that binding a non-loopback address without API_ADMIN_TOKEN exits 2, says why,
    and never opens the port."""
    port = free_port()
    env = {
        **os.environ,
        "API_HOST": host,
        "API_PORT": str(port),
        "VERTEBRAL_DATA": str(data_path()),
    }
    env.pop("API_ADMIN_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    figure(f"bind {host} without a token: exit code", result.returncode, "2, port never opened")
    assert result.returncode == 2, result.stderr
    assert "API_ADMIN_TOKEN" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the port was opened"
