"""The README followed top to bottom from a fresh clone, every command run as written.

A newcomer clones the repository, exports ``VERTEBRAL_DATA`` to their own copy and types
the README's ``bash`` blocks in order. This test does the same in a ``git clone`` of this
repository, with the data path the test gives in place of the README's placeholder, and
fails on the first command that exits non-zero (or a curl answered with an error body).
What it adapts, and why, is listed below; what cannot run here is skipped by name.

Speed: the clone reuses this checkout's ``.venv`` (a symlink; its ``pyproject.toml`` is
made older than the venv's stamp so ``make`` does not reinstall), the studies are small
(``--trials 3``, ``DEMO_TRIALS=3``), Spark's JVM is a short job's (``PYSPARK_SUBMIT_ARGS``,
tests/conftest.py), and the registry is a throwaway database on the suite's server (two
embedded servers on one port are refused: issue 26, point 3).

The walk runs once per module (fixture ``readme_walk``), and the checks of its first
``make demo`` (the whole flow's output, its API stopped, its report in headless Chromium)
read that run: they were tests/test_demo.py, which ran the demo a second time on its own
(issue 22, point 6). What that demo wrote is copied aside before ``make demo-2c`` writes
the same files.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import data_path, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Commands that cannot run here, by how they start, and why.
SKIPPED = {
    "make test": "the suite itself: this test is part of it",
    "docker compose": "no Docker engine here (tests/test_compose.py checks the file)",
    "export API_ADMIN_TOKEN": "the docker compose block's token (docker is skipped)",
    "sudo apt-get": "installs system packages (Java is already here)",
    ".venv/bin/pip install": "would re-point the shared venv's editable install at the clone",
    "python -m venv /tmp/score-env": "packs an environment for a real Spark cluster",
    "/tmp/score-env/bin/venv-pack": "packs an environment for a real Spark cluster",
    "export PYSPARK_DRIVER_PYTHON": "a real Spark cluster's settings",
    "spark-submit": "needs a real Spark cluster",
    "make bench": "the benchmarks take half an hour",
}
# Servers the README starts and leaves running (Ctrl-C): started in the background, waited
# for at the path given, stopped when the walk ends.
SERVERS = {
    "make mlflow-ui": "/health",
    "make serve": "/health",
    "mlflow models serve": "/ping",
}
RUN_ID = re.compile(r"bridge publish --run-id ([0-9a-f]{32})")
# The demo report's sections, and how headless Chromium renders it (test_mlflow_registry too).
SECTION_IDS = (
    "data",
    "study",
    "plots",
    "versions",
    "history",
    "gate",
    "shadow",
    "feedback",
    "canary",
    "webhooks",
    "requests",
    "batch",
    "monitoring",
    "cli",
    "timings",
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(block number, command) for every command of every ``bash`` block, in order: lines
    joined across backslashes and open quotes, comments and blank lines dropped."""
    found = []
    for number, block in enumerate(re.findall(r"```bash\n(.*?)```", text, re.S)):
        buffer = ""
        for line in block.splitlines():
            buffer = f"{buffer}\n{line}" if buffer else line.strip()
            if buffer.endswith("\\"):
                continue
            try:
                words = shlex.split(buffer, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            if words:
                found.append((number, buffer.strip()))
            buffer = ""
    return found


class Walk:
    """One shell session's state across commands: its environment and the outputs."""

    def __init__(self, clone: Path, env: dict[str, str], ports: dict[str, int]):
        self.clone, self.env, self.ports = clone, env, ports
        self.servers: list[subprocess.Popen] = []
        self.server_ports: list[int] = []
        self.block_outputs: dict[int, list[str]] = {}
        self.done: set[str] = set()
        self.last: subprocess.CompletedProcess | None = None

    def adapt(self, block: int, command: str) -> str:
        """The command with the README's placeholders and fixed ports made this machine's."""
        data = str(data_path())
        command = command.replace("/path/to/column_3C_weka.csv", data)
        command = command.replace("/ruta/a/column_3C_weka.csv", data)
        command = command.replace("--trials 40", "--trials 3")
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{self.ports['api']}")
        command = command.replace("-p 5001", f"-p {self.ports['models_serve']}")
        if command.startswith("make mlflow-ui"):
            command = f"make mlflow-ui MLFLOW_UI_ARGS='--port {self.ports['ui']}'"
        if "<RUN_ID>" in command:
            command = command.replace("<RUN_ID>", self.run_id(block))
        return command

    def run_id(self, block: int) -> str:
        """The run the block's earlier output suggests publishing, else an unpublished one."""
        for output in reversed(self.block_outputs.get(block, [])):
            suggested = RUN_ID.findall(output)
            if suggested:
                return suggested[-1]
        runs = json.loads(self.shell(".venv/bin/bridge runs --json", timeout=120))
        return next(r["run_id"] for r in runs if not r["published_versions"])

    def shell(self, command: str, timeout: float) -> str:
        """Run ``command`` in bash as typed (assignments exported, like an interactive shell
        whose later commands see them); keep the environment it leaves; fail on exit != 0."""
        result = self.run(command, timeout)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{output[-3000:]}"
        # `|| echo` keeps a README line going on exit 3 (drift); an error is still an error.
        assert not re.search(r"^error: ", output, re.M), f"`{command}`:\n{output[-2000:]}"
        if command.startswith("curl"):
            assert '"error": {' not in output, f"`{command}` answered an error:\n{output[-2000:]}"
        env_file = self.clone / ".walk-env"
        kept = dict(item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
        self.env = {k: v for k, v in kept.items() if k not in ("PWD", "OLDPWD", "SHLVL", "_")}
        return output

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        """Run ``command`` in bash (see ``shell``), checking nothing; the last run is kept
        in ``self.last`` (the demo's checks read its exit code and outputs)."""
        self.last = None  # a timeout leaves no run
        env_file = self.clone / ".walk-env"
        script = f"set -a\n{command}\nstatus=$?\nenv -0 > {env_file}\nexit $status\n"
        self.last = subprocess.run(
            ["bash", "-c", script],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return self.last

    def start(self, command: str, path: str) -> str:
        """Start a server the README leaves running; wait until ``path`` answers; its output
        so far."""
        port = next(
            int(p) for p in re.findall(r"(?:--port |-p )(\d+)", command) or [self.ports["api"]]
        )
        log = open(self.clone / f".walk-server-{len(self.servers)}.log", "wb")
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.clone,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.servers.append(process)
        self.server_ports.append(port)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, f"`{command}` exited:\n{Path(log.name).read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5):
                    return Path(log.name).read_text(errors="replace")
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        pytest.fail(f"`{command}` did not answer {path} within 180 s")

    def stop_servers(self) -> None:
        for process in self.servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        # Their workers (same process group) may close their sockets just after the shell
        # has gone: wait for the ports, which the demo's checks below find free (the demo's
        # API had the port `make serve` took after it).
        deadline = time.monotonic() + 20
        for port in self.server_ports:
            while _accepts(port) and time.monotonic() < deadline:
                time.sleep(0.1)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def quiet_demo(output: str) -> None:
    """The demo keeps `bridge list --json` (~400 lines) for its report, and does not end on
    the URL of the API it has already stopped (issue 26)."""
    assert '"artifact_file_id"' not in output, "the demo printed bridge list --json"
    assert "lines of JSON, in the report" in output
    assert "this run's was" not in output


@dataclass
class WalkResult:
    """What the walk left: its clone; the first failure (None when every command passed);
    the first `make demo`'s run (exit code, stdout, stderr) and a directory holding copies
    of the outputs/ and reports/ it wrote (`make demo-2c` writes over them later)."""

    clone: Path
    error: BaseException | None = None
    demo: subprocess.CompletedProcess | None = None
    demo_dir: Path | None = None
    skipped: list[str] = field(default_factory=list)


def keep_demo_outputs(clone: Path, target: Path) -> Path:
    """Copy the clone's outputs/ and reports/ (what the demo just wrote) to ``target``."""
    for name in ("outputs", "reports"):
        if (clone / name).is_dir():
            shutil.copytree(clone / name, target / name, dirs_exist_ok=True)
    return target


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of this repository's committed tree, sharing this checkout's venv."""
    target = tmp_path_factory.mktemp("walk") / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    (target / ".venv").symlink_to(ROOT / ".venv")
    os.utime(target / "pyproject.toml", (0, 0))  # older than the venv's stamp: no reinstall
    return target


@pytest.fixture(scope="module")
def readme_walk(clone, mongo_server, mongo_client, tmp_path_factory):
    """Walk the README once for this module: every command in order, the first failure
    kept (the walk's test raises it) rather than raised here, so the demo's checks still
    read a demo that passed."""
    db_name = f"test_{uuid.uuid4().hex[:12]}"
    demo_copy = tmp_path_factory.mktemp("readme-demo")
    result = WalkResult(clone)
    try:
        walk_the_readme(clone, mongo_server, db_name, demo_copy, result)
    except (Exception, pytest.fail.Exception) as exc:
        result.error = exc
    yield result
    mongo_client.drop_database(db_name)


def walk_the_readme(clone, mongo_server, db_name, demo_copy, result: WalkResult) -> None:
    """Run the README's commands in ``clone``; raise on the first that fails."""
    ports = {"api": free_port(), "ui": free_port(), "models_serve": free_port()}
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(clone)),
        "LANG": "C.UTF-8",
        # The clone's code, not the checkout's the shared venv was installed from.
        "PYTHONPATH": str(clone),
        "MONGODB_URI": mongo_server.uri,
        "REGISTRY_DB": db_name,
        "API_PORT": str(ports["api"]),
        "DEMO_TRIALS": "3",
        "MPLBACKEND": "Agg",
        # `make score` and `bridge score` are short local jobs here (tests/conftest.py).
        "PYSPARK_SUBMIT_ARGS": os.environ["PYSPARK_SUBMIT_ARGS"],
        # Online, the first command downloads the UCI zip into data/; this machine is
        # offline, so the test gives the data from the start (the README's export, further
        # down, then names the same file).
        "VERTEBRAL_DATA": str(data_path()),
    }
    walk = Walk(clone, env, ports)
    skipped = result.skipped
    try:
        for block, written in readme_commands((clone / "README.md").read_text()):
            reason = next(
                (why for start, why in SKIPPED.items() if written.startswith(start)), None
            )
            if reason:
                skipped.append(f"{written.splitlines()[0]}: {reason}")
                continue
            command = walk.adapt(block, written)
            words = " ".join(shlex.split(command, comments=True))
            if words in walk.done:  # make demo, again in the data section and in Spanish
                continue
            server = next((p for part, p in SERVERS.items() if part in words), None)
            started = time.perf_counter()
            if server is not None:
                printed = walk.start(command, server)
                if words.startswith("make serve"):  # issue 26: it printed no URL
                    assert f"console: http://127.0.0.1:{ports['api']}/" in printed, printed
                if words.startswith("make mlflow-ui"):  # the study's runs, and its candidates
                    assert "its candidates only:" in printed and "searchFilter=" in printed
            else:
                try:
                    output = walk.shell(command, timeout=600)
                finally:
                    if words == "make demo" and result.demo is None:
                        result.demo = walk.last
                        result.demo_dir = keep_demo_outputs(clone, demo_copy)
                walk.block_outputs.setdefault(block, []).append(output)
                if words.startswith("make demo"):
                    quiet_demo(output)
            print(f"{time.perf_counter() - started:6.1f}s  {words[:100]}")
            walk.done.add(words)
    finally:
        walk.stop_servers()
    print("skipped:\n  " + "\n  ".join(skipped))


def test_the_readme_runs_top_to_bottom_in_a_fresh_clone(readme_walk):
    """Check every command of the README's bash blocks, in order, exits 0 in a fresh clone."""
    if readme_walk.error is not None:
        raise readme_walk.error
    clone = readme_walk.clone
    # The outputs stay under outputs/ (issue 26): no example writes at the clone's root.
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = {p.split("/")[0] for p in tracked} | {".git", ".venv", ".walk-env"}
    expected |= {"outputs", "reports", "data", "mlruns", ".registry"}  # ignored, documented
    stray = sorted(
        p.name for p in clone.iterdir() if p.name not in expected and not p.name.startswith(".walk")
    )
    assert stray == [], f"written at the clone's root: {stray}"


# --- the walk's `make demo`: its whole flow, its API stopped, its report (were test_demo.py)


@pytest.fixture(scope="module")
def demo_run(readme_walk):
    """The walk's first `make demo` (DEMO_TRIALS=3, everything in the fresh clone): the
    directory holding copies of the outputs/ and reports/ it wrote, and its run."""
    if readme_walk.demo is None:
        pytest.fail(f"the walk did not run `make demo` to its end: {readme_walk.error!r}")
    return readme_walk.demo_dir, readme_walk.demo


def test_demo_runs_the_whole_flow(demo_run):
    """Check the demo exits 0 after every step and leaves predicciones.csv and the report."""
    workdir, result = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in (
        "Registry database",
        "Train",
        "Publish the two best runs",
        "Start the API",
        "List models and predict",
        "Webhooks: a local receiver",
        "Activate version",
        "Shadow traffic",
        "Feedback",
        "Canaries",
        "Batch prediction",
        "Versions and activation history",
        "Monitoring",
        "Webhook events the receiver got",
    ):
        assert re.search(rf"== \d+\. {re.escape(step)}", out), f"step missing: {step}"
    assert "after rollback /predict answers with version" in out
    # The promotion gate judged the runner-up: refused then forced with a reason, or (when
    # the runner-up won by the margin) refusing the way back.
    assert "promotion rule: f1_macro: {min_absolute_change: 0.05}" in out
    assert "r1 (used)" in out and "test split of vertebral-column v1" in out
    refused_then_forced = "the promotion gate refused" in out and "forced: v" in out
    assert refused_then_forced or "the gate refuses the way back" in out, out[-4000:]
    assert "drifting: degree_spondylolisthesis" in out  # bridge monitor flagged it, alone
    assert re.search(r"console \(drift shown with its plots\): http://127\.0\.0\.1:\d+/", out)
    # The shadow comparison of the 62 held-out patients.
    assert re.search(r"v\d+ \(shadow\) vs v\d+ \(active\): 62 records, agreement \d+\.\d%", out)
    # Their diagnoses as feedback: live accuracy beside the test accuracy.
    assert re.search(
        r"live quality of version \d+: 62 labelled, live accuracy \d\.\d{3} "
        r"\(test accuracy \d\.\d{3}\)",
        out,
    ), out[-4000:]
    # The broken canary ended by its guardrail, with its figures; the best answers again.
    assert re.search(r"audit entry: canary-abort by guardrail on .*: guardrail: error rate", out), (
        out[-4000:]
    )
    assert re.search(r"canary: version \d+, \d+ request\(s\) in the window, [1-9]\d* failed", out)
    assert "after the abort the same keys are answered by version" in out
    assert re.search(r"promoted: vertebral-column v\d+ is active", out)
    # The receiver got signed activate and rollback events (and none badly signed).
    for event in ("activate", "rollback", r"canary \(canary-abort\)"):
        assert re.search(
            rf"^\s+{event}: v\d+ -> v\d+ .*signature verified: yes$", out, re.MULTILINE
        ), f"no signed {event} event received"
    assert "signature verified: NO" not in out
    # MLflow's alias follows publish --activate, the activation and the rollback, then the
    # canary's promotion and the rollback after it (a canary itself moves no alias).
    moves = re.findall(r"@production -> MLflow version \d+ \(registry v(\d+)\)", out)
    best, other = moves[0], moves[1]
    assert moves == [best, other, best, other, best] and best != other, moves
    with open(workdir / "outputs" / "predicciones.csv", newline="") as handle:
        predictions = list(csv.reader(handle))
    with open(workdir / "outputs" / "demo" / "new_patients.csv", newline="") as handle:
        batch_input = list(csv.reader(handle))
    assert len(predictions) == len(batch_input) == 63  # header + 62 held-out patients
    assert predictions[0][:2] == ["patient_id", "pelvic_incidence"]
    assert "prediction" in predictions[0] and predictions[0][-1] == "model_version"
    assert [row[0] for row in predictions] == [row[0] for row in batch_input]  # same order
    assert re.search(r"^\s+\d+\.\ds\s+total$", out, re.MULTILINE), "no total time printed"


def test_demo_stops_what_it_started(demo_run):
    """Check the demo's API is gone: its server process has exited and its port is free."""
    _, result = demo_run
    started = re.search(r"API ready at http://([\d.]+):(\d+) \(pid (\d+)\)", result.stdout)
    assert started, result.stdout[-3000:]
    host, port, pid = started.group(1), int(started.group(2)), int(started.group(3))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex((host, port)) != 0, f"something still accepts on port {port}"
    with socket.socket() as probe:
        # SO_REUSEADDR, as servers bind: the demo's closed connections may linger in TIME_WAIT,
        # but a socket still listening on the port makes bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


@pytest.mark.skipif(not shutil.which("chromium"), reason="headless Chromium is not installed")
def test_report_renders_sections_and_images(demo_run, tmp_path):
    """Check the report opens in headless Chromium with every section and every image decoded."""
    workdir, result = demo_run
    assert result.returncode == 0
    report = workdir / "reports" / "demo" / "index.html"
    # A copy with a probe that records, once loaded, how many images really decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(
        report.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{document.body.dataset.decoded="
            "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length;"
            "document.body.dataset.images=document.images.length;});</script></body>",
        )
    )
    chromium = [shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u'}"]
    dom = subprocess.run(
        [*chromium, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in dom, f"section {section} not rendered"
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    decoded = int(re.search(r'data-decoded="(\d+)"', dom).group(1))
    assert images >= 9 and decoded == images, f"{decoded} of {images} images decoded"
    assert "curl -s -X POST" in dom and "/predict" in dom
    assert "http://127.0.0.1:5000/#/models/vertebral-column" in dom  # the MLflow model page
    shot = workdir / "reports" / "demo" / "screenshot.png"
    subprocess.run(
        [*chromium, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000
