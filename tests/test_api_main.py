"""Tests of ``python -m api``: the bind safety rule and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from conftest import ROOT
from servers import ApiServer

from api.__main__ import check_bind, is_loopback
from conf.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.20", False),
        ("::", False),
    ],
)
def test_is_loopback(host, loopback):
    """Check which bind addresses count as local only."""
    assert is_loopback(host) is loopback


def test_exposed_bind_needs_a_token_or_insecure():
    """Check that 0.0.0.0 without API_ADMIN_TOKEN is refused unless --insecure."""
    exposed = load_settings(env={"API_HOST": "0.0.0.0"})
    with pytest.raises(SettingsError, match="API_ADMIN_TOKEN"):
        check_bind(exposed, insecure=False)
    check_bind(exposed, insecure=True)
    token = "0123456789abcdef"  # 16 characters: the shortest accepted
    check_bind(load_settings(env={"API_HOST": "0.0.0.0", "API_ADMIN_TOKEN": token}), insecure=False)
    check_bind(load_settings(env={}), insecure=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_short_admin_token_is_refused_at_start_up(host):
    """Check that a token under 16 characters is refused, whatever the bind and --insecure."""
    short = load_settings(env={"API_HOST": host, "API_ADMIN_TOKEN": "s3cret-but-15ch"})
    with pytest.raises(SettingsError, match="API_ADMIN_TOKEN is 15 characters long"):
        check_bind(short, insecure=True)


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--host", "0.0.0.0"], {}, "API_ADMIN_TOKEN is unset"),
        ([], {"API_PORT": "eighty"}, "API_PORT: expected a port number"),
        (["--workers", "0"], {}, "api.workers: expected a number in 1..64"),
        ([], {"API_ADMIN_TOKEN": "hunter2"}, "use at least 16"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args, env, fragment):
    """Check that refusals print one line, no traceback, and exit 2."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("API_")}
    result = subprocess.run(
        [sys.executable, "-m", "api", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_two_instances_share_no_per_user_file(settings, tmp_path):
    """Check that two instances on one machine share no per-user file: stopping one leaves
    the other answering, and neither opens a socket under HOME or XDG_RUNTIME_DIR (gunicorn
    >= 25.1 opened one control socket per user there, and stopping either removed it)."""
    home = tmp_path / "home"
    runtime = tmp_path / "runtime"
    runtime.mkdir(parents=True)
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    with ApiServer(settings, tmp_path, workers=1, env=env).start(wait_for="/health") as first:
        with ApiServer(settings, tmp_path, workers=1, env=env).start(wait_for="/health") as other:
            assert requests.get(other.url("/health"), timeout=10).status_code == 200
        assert requests.get(first.url("/health"), timeout=10).status_code == 200
    # (onnxruntime keeps a device id under ~/.cache: a file, shared by design, not a socket)
    shared = [p for p in (home, runtime) if p.exists() for p in p.rglob("*") if p.is_socket()]
    assert shared == []
