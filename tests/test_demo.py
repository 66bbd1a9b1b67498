"""`make demo` end to end in CI-like conditions, and its report rendered by headless Chromium."""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import data_path, free_port

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, mongo_server):
    """Run `python -m demo` once with a small study, everything in a scratch directory."""
    workdir = tmp_path_factory.mktemp("demo")
    env = {
        **os.environ,
        "MONGODB_URI": mongo_server.uri,
        "REGISTRY_DB": f"demo_{workdir.name[-12:]}".replace("-", "_"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
        "VERTEBRAL_DATA": str(data_path()),
        "API_PORT": str(free_port()),
    }
    env.pop("API_ADMIN_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--trials", "6"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return workdir, result


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
