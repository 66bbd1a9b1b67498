"""docker compose: nothing here runs Docker, so check the file agrees with the project.

Services, ports, environment variable names and commands must match the settings
module and the CLIs, or `docker compose up` would fail on a user's machine.
"""

import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from conftest import free_port

from api.launcher import Server, api_command, serving
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
            source = interpolate(volume, {}).split(":")[0]
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


# --- issue 26: a compose stack that would run ------------------------------------------

# What each project service must set because the default is wrong inside a container:
# the registry is the mongo service (not an embedded server), MLflow is the mlflow service
# (not a SQLite file in the container), the API listens on every interface with a token,
# and the trainer reads the data file the host names.
NEEDED = {
    "api": {
        "MONGODB_URI",
        "REGISTRY_DB",
        "MODEL_NAME",
        "MLFLOW_TRACKING_URI",
        "API_HOST",
        "API_PORT",
        "API_ADMIN_TOKEN",
        "OUTPUT_DIR",
    },
    "trainer": {
        "MONGODB_URI",
        "REGISTRY_DB",
        "MODEL_NAME",
        "MLFLOW_TRACKING_URI",
        "VERTEBRAL_DATA",
    },
}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:[-+?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:+replacement}``, ``${VAR:?error}``."""

    def one(match: re.Match) -> str:
        name, operator, operand = match.groups()
        value = env.get(name, "")
        if operator == ":-":
            return value or operand
        if operator == ":+":
            return operand if value else ""
        if operator == ":?":
            assert value, f"compose would stop: {operand}"
        return value

    return INTERPOLATION.sub(one, text)


def test_every_service_sets_the_variables_its_code_reads():
    """Check the api and the trainer set every variable whose default is wrong in a container,
    and the api's activations move MLflow's alias on the mlflow service."""
    for name, needed in NEEDED.items():
        missing = needed - set(SERVICES[name]["environment"])
        assert not missing, f"the {name} service does not set {sorted(missing)}"
        assert needed <= set(ENV_OVERRIDES)  # names the settings module reads
    assert SERVICES["api"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert SERVICES["api"]["depends_on"]["mlflow"]["condition"] == "service_started"


def test_an_exported_vertebral_data_reaches_the_trainer():
    """Check VERTEBRAL_DATA=/abs/file: the trainer's variable names the path its volume mounts
    the file at; unset, the variable is empty (the ./data zip) and the stand-in file is one the
    clone tracks (a missing source would make Docker create a directory in its place; the
    read-write ./data and ./reports folders it may create, and a fresh clone has neither)."""
    trainer = SERVICES["trainer"]
    given = {"VERTEBRAL_DATA": "/home/me/column_3C_weka.csv"}
    inside = interpolate(trainer["environment"]["VERTEBRAL_DATA"], given)
    mounts = [interpolate(v, given).split(":") for v in trainer["volumes"]]
    assert [given["VERTEBRAL_DATA"], os.path.normpath(inside), "ro"] in [
        [source, os.path.normpath(target), *rest] for source, target, *rest in mounts
    ]
    assert interpolate(trainer["environment"]["VERTEBRAL_DATA"], {}) == ""
    unset = [interpolate(v, {}).split(":") for v in trainer["volumes"]]
    stand_ins = [source for source, _, *mode in unset if mode == ["ro"]]
    assert stand_ins and all((ROOT / source).is_file() for source in stand_ins)
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", *stand_ins], cwd=ROOT, capture_output=True
    )
    assert tracked.returncode == 0, tracked.stderr


def compose_mlflow_command(tmp_path: Path, port: int) -> list[str]:
    """The mlflow service's command word for word, its paths and port moved to this machine."""
    words = []
    for word in command_words("mlflow"):
        word = word.replace("/mlflow/", f"{tmp_path}/")
        words.append(word)
    words[words.index("--host") + 1] = "127.0.0.1"
    words[words.index("--port") + 1] = str(port)
    assert words[0] == "mlflow"
    return [str(Path(sys.executable).with_name("mlflow")), *words[1:]]


def test_mlflow_answers_the_trainers_host_header(tmp_path):
    """Start `mlflow server` with the compose file's arguments and call it as the trainer and
    the api do (Host: mlflow:5000): MLflow 3's security middleware answers 403 to a Host
    not in --allowed-hosts."""
    port = free_port()
    env = {**os.environ, **SERVICES["mlflow"]["environment"]}  # as compose would start it
    server = Server(
        "mlflow", compose_mlflow_command(tmp_path, port), port, tmp_path / "mlflow.log", env=env
    )
    with serving(server, path="/health", timeout_s=180):
        for host in ("mlflow:5000", "127.0.0.1:5000"):
            request = urllib.request.Request(
                f"{server.base_url}/api/2.0/mlflow/experiments/search?max_results=1",
                headers={"Host": host},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == 200, f"Host: {host} got HTTP {status}"


def test_the_api_starts_with_the_compose_environment(mongo_server, registry_db_name, tmp_path):
    """Start `python -m api` with the api service's environment (its URIs pointed at this
    machine's embedded database and a local MLflow store, its paths moved to tmp): it binds,
    accepts its token and answers /health and /models."""
    environment = {
        name: interpolate(str(value), {"API_ADMIN_TOKEN": "t" * 24})
        for name, value in SERVICES["api"]["environment"].items()
    }
    port = free_port()
    environment.update(
        MONGODB_URI=mongo_server.uri,
        REGISTRY_DB=registry_db_name,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        OUTPUT_DIR=str(tmp_path / "outputs"),
        API_PORT=str(port),
        API_WORKERS="1",
    )
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path))}
    server = Server("api", api_command(), port, tmp_path / "api.log", env={**env, **environment})
    server.host = "127.0.0.1"  # the container's 0.0.0.0 includes loopback
    with serving(server, path="/health", timeout_s=120):
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=30) as answer:
            assert answer.status == 200
