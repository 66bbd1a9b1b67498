"""docker compose: nothing here runs Docker, so check the file agrees with the project.

Services, ports, environment variable names and commands must match the settings
module and the CLIs, or `docker compose up` would fail on a user's machine.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from conf.settings import ENV_OVERRIDES, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def command_words(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return command if isinstance(command, list) else shlex.split(command)


def help_text(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(argv)} --help failed: {result.stderr[-500:]}"
    return result.stdout


def test_services_and_images():
    """Check the four services: mongo:7 with a volume and a healthcheck, mlflow, api, trainer."""
    assert set(SERVICES) == {"mongo", "mlflow", "api", "trainer"}
    mongo = SERVICES["mongo"]
    assert mongo["image"] == "mongo:7"
    assert any(v.endswith(":/data/db") for v in mongo["volumes"])
    assert "mongosh" in mongo["healthcheck"]["test"]
    for name in ("mlflow", "api", "trainer"):
        assert SERVICES[name]["build"] == "."
    assert SERVICES["trainer"]["restart"] == "no"  # one-shot
    for name in ("api", "trainer"):
        assert SERVICES[name]["depends_on"]["mongo"]["condition"] == "service_healthy"
    declared = set(COMPOSE["volumes"])
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in declared, volume


def test_ports_match_the_configuration():
    """Check that the published ports are the MLflow UI's 5000 and the API's API_PORT."""
    api = SERVICES["api"]
    port = api["environment"]["API_PORT"]
    assert f"127.0.0.1:{port}:{port}" in api["ports"]
    assert int(port) == load_settings(env={}).api.port
    assert api["environment"]["API_HOST"] == "0.0.0.0"  # inside the container
    mlflow_words = command_words("mlflow")
    assert mlflow_words[mlflow_words.index("--port") + 1] == "5000"
    assert "127.0.0.1:5000:5000" in SERVICES["mlflow"]["ports"]
    volume_mount = SERVICES["mlflow"]["volumes"][0].split(":")[1]
    assert volume_mount in mlflow_words[mlflow_words.index("--backend-store-uri") + 1]
    assert mlflow_words[mlflow_words.index("--artifacts-destination") + 1].startswith(volume_mount)


def test_environment_names_are_the_projects():
    """Check that every variable set for the project's services is one the settings read."""
    for name in ("api", "trainer"):
        environment = SERVICES[name]["environment"]
        unknown = set(environment) - set(ENV_OVERRIDES)
        assert not unknown, f"{name} sets variables the project never reads: {unknown}"
        assert re.fullmatch(r"mongodb://mongo:27017/?", environment["MONGODB_URI"])
    assert SERVICES["trainer"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "API_ADMIN_TOKEN" in SERVICES["api"]["environment"]  # non-loopback bind needs it


def test_api_command_is_the_projects_server():
    """Check that the API service runs `python -m api`, which exists and has --help."""
    assert command_words("api") == ["python", "-m", "api"]
    assert "usage" in help_text(sys.executable, "-m", "api", "--help").lower()


def test_trainer_commands_use_real_options():
    """Check every option the one-shot trainer passes exists in the CLI it calls."""
    words = command_words("trainer")
    assert words[:2] == ["sh", "-c"]
    steps = [shlex.split(step) for step in words[2].split("&&")]
    assert [step[:3] for step in steps] == [
        ["python", "-m", "pipelines.train"],
        ["bridge", "publish", "--best"],
    ]
    train_help = help_text(sys.executable, "-m", "pipelines.train", "--help")
    bridge = str(Path(sys.executable).with_name("bridge"))
    publish_help = help_text(bridge, "publish", "--help")
    for step, text in zip(steps, (train_help, publish_help), strict=False):
        for option in (w for w in step if w.startswith("--")):
            assert option in text, f"{option} is not an option of {' '.join(step[:3])}"


def test_dockerfile_installs_every_package():
    """Check that the image copies each package pyproject.toml installs."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1)
    for package in re.findall(r'"(\w+)\*?"', packages):
        assert f"COPY {package} ./{package}" in dockerfile, package
    assert 'CMD ["python", "-m", "api"]' in dockerfile
