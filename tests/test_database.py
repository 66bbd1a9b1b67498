"""The registry database bootstrap: the embedded server starts, is reused and stops."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from conf.settings import EmbeddedSettings, RegistrySettings
from conf.uris import mask_uri
from registry_bridge import database
from registry_bridge.errors import RegistryError


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
        # Unescaped characters a URL parser reads as the end of the netloc.
        ("mongodb://u:p#ss@h:1/", "mongodb://u:***@h:1/"),
        ("mongodb://u:a/b?c@h:1/db", "mongodb://u:***@h:1/db"),
        ("mongodb://u:x@y@h:1/", "mongodb://u:***@h:1/"),
        ("mongodb://u:%23%2F@h:1/", "mongodb://u:***@h:1/"),
        (
            "mongodb://h:1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:t0k",
            "mongodb://h:1/?authMechanism=MONGODB-AWS&authMechanismProperties=***",
        ),
        (
            "mongodb://h:1/?tlsCertificateKeyFilePassword=k3y",
            "mongodb://h:1/?tlsCertificateKeyFilePassword=***",
        ),
        ("u:pw@h", "<URI without scheme://, not shown>"),
    ],
)
def test_mask_uri(uri, masked):
    """Check that passwords never survive mask_uri, whatever characters they hold."""
    assert mask_uri(uri) == masked


@pytest.mark.parametrize("password", ["Zq7#Kx9", "Jw3/Rt8?Pm2", "Hv5?Lb4#Qs6/"])
def test_unescaped_password_is_one_line_without_any_part_of_it(password):
    """Check that a URI with unescaped #, / or ? in the password gives one line, no secret."""
    uri = f"mongodb://admin:{password}@127.0.0.1:{free_port()}/"
    settings = RegistrySettings(mongodb_uri=uri, timeout_ms=300)
    messages = []
    for call in (database.check_uri, database.connect):
        try:
            call(settings)
        except RegistryError as exc:
            messages.append(str(exc))
    assert messages, "connect must refuse it"
    for message in messages:
        assert "mongodb://admin:***@127.0.0.1:" in message and "\n" not in message
        assert not [p for p in re.split(r"[#/?]", password) if p and p in message], message


def test_credentials_against_a_server_without_auth_are_one_line(mongo_server):
    """Check that a user and password sent to a server without authentication (the embedded
    one; a stock MongoDB refuses the login) give UNAUTHORIZED in one line, no traceback."""
    host_port = mongo_server.uri.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    uri = f"mongodb://someone:hunter2@{host_port}/"
    with pytest.raises(RegistryError) as info:
        database.connect(RegistrySettings(mongodb_uri=uri, timeout_ms=2000))
    assert info.value.code == "UNAUTHORIZED"
    assert "cannot log in" in str(info.value) and "someone:***@" in str(info.value)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


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


def test_the_console_and_answers_never_show_the_uri_of_an_unreachable_database(tmp_path):
    """Check GET / (and what the console fetches) with the database down: says the registry
    is unreachable, without the URI's host, port, user, password or options; the log keeps
    the masked URI for the operator."""
    from dataclasses import replace

    from api_fixtures import make_app
    from conftest import throwaway_settings

    port = free_port()
    uri = (
        f"mongodb://reader:s3cret@127.0.0.1:{port}/"
        "?authSource=vaultdb&appName=leaky-app-name&tlsAllowInvalidHostnames=false"
    )
    settings = throwaway_settings(uri, "model_registry", tmp_path)
    settings = replace(settings, registry=replace(settings.registry, timeout_ms=300))
    client = make_app(settings).test_client()
    page = client.get("/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "cannot reach the registry database" in text
    answers = [text] + [
        client.get(path).get_data(as_text=True)
        for path in ("/models", "/ready", "/models/vertebral-column/history", "/fleet")
    ]
    for answer in answers:
        for part in ("reader", "s3cret", str(port), "127.0.0.1", "vaultdb", "leaky-app-name"):
            assert part not in answer, (part, answer[:500])
