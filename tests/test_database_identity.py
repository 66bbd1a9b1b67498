"""The embedded database knows whose it is (issue 26, point 3).

Two clones configured with the same port used to share one embedded server silently,
`bridge db status` naming this clone's folder while the answering server kept its data in
the other's. Here clone A's server runs; clone B, same port, other data directory, is
refused with one line naming both directories and the port setting.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from conf.settings import EmbeddedSettings, RegistrySettings
from registry_bridge import database
from registry_bridge.errors import RegistryError


@pytest.fixture
def clone_a(tmp_path):
    settings = EmbeddedSettings(port=free_port(), data_dir=tmp_path / "clone-a" / ".registry")
    yield settings
    database.stop_embedded(settings)


def test_another_clones_server_is_refused_and_status_names_the_one_answering(clone_a, tmp_path):
    """Check connect, db start and db status from clone B against clone A's running server."""
    database.start_embedded(clone_a)
    ours = database.embedded_status(clone_a)
    assert ours.running and not ours.foreign and ours.serving_data_dir == str(ours.data_dir)
    database.connect(RegistrySettings(embedded=clone_a)).close()  # its own clone: accepted

    clone_b = EmbeddedSettings(port=clone_a.port, data_dir=tmp_path / "clone-b" / ".registry")
    a_dir, b_dir = str(clone_a.data_dir.resolve()), str(clone_b.data_dir.resolve())
    with pytest.raises(RegistryError) as refused:
        database.connect(RegistrySettings(embedded=clone_b))
    message = str(refused.value)
    assert "\n" not in message and a_dir in message and b_dir in message
    assert "registry.embedded.port" in message

    config = tmp_path / "clone-b.yaml"
    config.write_text(
        f"registry:\n  embedded:\n    port: {clone_b.port}\n    data_dir: {clone_b.data_dir}\n"
    )
    bridge = [str(Path(sys.executable).with_name("bridge")), "--config", str(config)]
    env = {"PATH": "/usr/bin:/bin"}
    status = subprocess.run(
        [*bridge, "db", "status"], capture_output=True, text=True, env=env, timeout=60
    )
    assert status.returncode == 1 and a_dir in status.stdout, status.stdout + status.stderr
    assert f"this clone's is {b_dir}" in status.stdout
    started = subprocess.run(
        [*bridge, "db", "start"], capture_output=True, text=True, env=env, timeout=60
    )
    lines = started.stderr.strip().splitlines()
    assert started.returncode == 1 and len(lines) == 1 and a_dir in lines[0], started.stderr
    assert not clone_b.data_dir.exists()  # nothing of clone B was written anywhere


def _foreign_server(data_dir: Path) -> tuple[subprocess.Popen, EmbeddedSettings]:
    """nx-27017 started by hand on a free port, once it answers; a failure quotes its
    output (a CI run said only "the server did not start": another nx-27017, started
    by hand without ``--data-dir``, held the default pid file, which the new one read)."""
    settings = EmbeddedSettings(port=free_port(), data_dir=data_dir)
    log = data_dir.parent / "foreign-server.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("nx-27017")),
                "--data-dir",
                str(settings.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while not database.embedded_status(settings).running:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait(10)
            pytest.fail(f"the server did not start: {log.read_text()[-1000:]}")
        time.sleep(0.1)
    return server, settings


def test_a_server_this_clone_did_not_start_and_that_has_no_record_is_refused(tmp_path):
    """Check a server with no identity record (started by older code, or by hand) is refused
    unless this clone's pid file names it."""
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    server, settings = _foreign_server(data_dir)
    try:
        mine = EmbeddedSettings(port=settings.port, data_dir=tmp_path / "mine")
        with pytest.raises(RegistryError, match="a server this clone did not start"):
            database.start_embedded(mine)
    finally:
        server.terminate()
        server.wait(10)
