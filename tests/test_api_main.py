"""Tests of ``python -m api``: the bind safety rule and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

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
    check_bind(load_settings(env={"API_HOST": "0.0.0.0", "API_ADMIN_TOKEN": "t"}), insecure=False)
    check_bind(load_settings(env={}), insecure=False)


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["--host", "0.0.0.0"], {}, "API_ADMIN_TOKEN is unset"),
        ([], {"API_PORT": "eighty"}, "API_PORT: expected a port number"),
        (["--workers", "0"], {}, "api.workers: expected a number in 1..64"),
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
