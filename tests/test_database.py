"""The registry database bootstrap: the embedded server starts, is reused and stops."""

import subprocess
import sys
from pathlib import Path

import pytest

from conf.settings import EmbeddedSettings, RegistrySettings
from registry_bridge import database
from registry_bridge.errors import RegistryError
from tests.conftest import free_port


@pytest.fixture
def embedded(tmp_path):
    settings = EmbeddedSettings(port=free_port(), data_dir=tmp_path / "registry")
    yield settings
    database.stop_embedded(settings)


def test_embedded_server_starts_is_reused_and_stops(embedded):
    """Check the embedded server's life: start on demand, reuse, keep data, stop."""
    assert not database.embedded_status(embedded).running
    registry = RegistrySettings(embedded=embedded)

    client = database.connect(registry)  # starts it
    first = database.embedded_status(embedded)
    assert first.running and first.pid
    client["reg"]["things"].insert_one({"_id": 1})
    client.close()

    again = database.connect(registry)  # reuses it: same process, same data
    assert database.embedded_status(embedded).pid == first.pid
    assert again["reg"]["things"].find_one({"_id": 1}) == {"_id": 1}
    again.close()

    assert database.stop_embedded(embedded)
    assert not database.embedded_status(embedded).running
    assert not database.stop_embedded(embedded)  # stopping twice is harmless

    restarted = database.connect(registry)  # data survives a restart
    assert restarted["reg"]["things"].find_one({"_id": 1}) == {"_id": 1}
    restarted.close()


def test_mongodb_uri_set_starts_nothing(embedded, mongo_server):
    """Check that with MONGODB_URI set the embedded server is not started."""
    client = database.connect(RegistrySettings(mongodb_uri=mongo_server.uri, embedded=embedded))
    client.admin.command("ping")
    client.close()
    assert not database.embedded_status(embedded).running


def test_unreachable_uri_is_one_line_with_masked_password():
    """Check that a dead server gives REGISTRY_UNAVAILABLE naming the URI without its password."""
    uri = f"mongodb://admin:hunter2@127.0.0.1:{free_port()}/"
    with pytest.raises(RegistryError) as info:
        database.connect(RegistrySettings(mongodb_uri=uri, timeout_ms=300))
    assert info.value.code == "REGISTRY_UNAVAILABLE" and info.value.status == 503
    assert "hunter2" not in str(info.value)
    assert "mongodb://admin:***@127.0.0.1" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "uri, masked",
    [
        ("mongodb://u:p@h:1/db", "mongodb://u:***@h:1/db"),
        (
            "mongodb+srv://user:s%40cret@cluster.example.net/?retryWrites=true",
            "mongodb+srv://user:***@cluster.example.net/?retryWrites=true",
        ),
        ("mongodb://h:27017/", "mongodb://h:27017/"),
    ],
)
def test_mask_uri(uri, masked):
    """Check that passwords never survive mask_uri."""
    assert database.mask_uri(uri) == masked


def test_bridge_db_commands(embedded, tmp_path):
    """Check `bridge db start|status|stop` through the real console script."""
    config = tmp_path / "conf.yaml"
    config.write_text(
        f"registry:\n  embedded:\n    port: {embedded.port}\n    data_dir: {embedded.data_dir}\n"
    )
    bridge = [str(Path(sys.executable).with_name("bridge")), "--config", str(config)]
    env = {"PATH": "/usr/bin:/bin"}

    def run(*args):
        return subprocess.run([*bridge, *args], capture_output=True, text=True, env=env, timeout=60)

    status = run("db", "status")
    assert status.returncode == 1 and "stopped" in status.stdout
    started = run("db", "start")
    assert started.returncode == 0 and "running" in started.stdout, started.stderr
    assert run("db", "status").returncode == 0
    stopped = run("db", "stop")
    assert stopped.returncode == 0 and "stopped the embedded" in stopped.stdout
    assert not database.embedded_status(embedded).running


def test_bridge_reports_bad_setting_in_one_line(tmp_path):
    """Check that a bad environment value exits non-zero with a line naming the key."""
    bridge = str(Path(sys.executable).with_name("bridge"))
    result = subprocess.run(
        [bridge, "db", "status"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "API_PORT": "http"},
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "error: API_PORT: expected a port number 1..65535, got 'http'"
