"""The peers the online benchmark needs from outside this checkout, made once and cached.

- **MLServer** (its MLflow runtime) pins libraries that clash with this project's (mlflow
  3.x, pandas < 3), so it gets a virtual environment of its own, created with pip on
  first use under ``outputs/bench-cache/`` and reused by later runs (a stamp file marks
  one that installed and imported cleanly). scikit-learn is pinned to this project's
  version, so MLServer unpickles the very model the other servers serve, and uvloop to
  < 0.22 (from 0.22 on, ``asyncio.get_event_loop()`` in a fresh process raises, and
  MLServer's inference workers call it as they start: the server exits at once).
- **Today's API** (the issue's baseline): a ``git worktree`` of a given revision (default
  the last commit of main before issue 23), whose ``python -m api`` runs with this
  interpreter against the bench's registry.

Each helper returns what it made, or raises :class:`Unavailable` with the reason, which
the benchmark reports as "not measured" instead of a figure.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

from bench.common import ROOT

log = logging.getLogger("bench")

CACHE_DIR = ROOT / "outputs" / "bench-cache"
MLSERVER_VERSION = "1.7.1"
# The main of the last commit before issue 23 (one serving core, OIP, the server chosen
# by measurement): "today's API" of the goals.
BASELINE_REV = "bed3445"
PIP_TIMEOUT_S = 1200


class Unavailable(RuntimeError):
    """A peer that cannot be run here; the message says why (it goes into the results)."""


def _sklearn_version() -> str:
    return importlib_metadata.version("scikit-learn")


def mlserver_venv(cache: Path = CACHE_DIR) -> Path:
    """The ``bin/`` of a virtual environment with MLServer and its MLflow runtime.

    Created on first use (a few minutes: pip downloads MLServer, mlflow and their
    dependencies), then reused. The pip log stays beside it.

    Raises:
        Unavailable: the environment could not be created or installed (names the log).
    """
    sklearn = _sklearn_version()
    venv = cache / f"mlserver-{MLSERVER_VERSION}-sklearn-{sklearn}"
    stamp = venv / "bench-ready.json"
    requirements = [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-mlflow=={MLSERVER_VERSION}",
        f"scikit-learn=={sklearn}",
        "uvloop<0.22",
    ]
    try:
        if json.loads(stamp.read_text())["requirements"] == requirements:
            return venv / "bin"
    except (OSError, ValueError, KeyError):
        pass  # not made yet, or by other requirements: make it again
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / f"{venv.name}.log"
    log.info(
        "installing %s into %s (first run only; log %s)", " ".join(requirements), venv, log_path
    )
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            *requirements,
        ],
        [
            str(venv / "bin" / "python"),
            "-c",
            "import mlserver, mlserver_mlflow, mlflow, sklearn, pandas",
        ],
    ]
    with open(log_path, "w", encoding="utf-8") as handle:
        for step in steps:
            handle.write(f"$ {' '.join(step)}\n")
            handle.flush()
            try:
                done = subprocess.run(
                    step, stdout=handle, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT_S
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise Unavailable(
                    f"MLServer could not be installed ({exc}); see {log_path}"
                ) from exc
            if done.returncode != 0:
                tail = _last_error(log_path)
                raise Unavailable(
                    f"MLServer could not be installed ({step[2] if len(step) > 2 else step[0]} "
                    f"exited with {done.returncode}: {tail}); see {log_path}"
                )
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    stamp.write_text(json.dumps({"requirements": requirements, "freeze": frozen}, indent=1))
    return venv / "bin"


def mlserver_versions(bin_dir: Path) -> dict[str, str]:
    """The versions that decide MLServer's figures, from the stamp of its environment."""
    try:
        frozen = json.loads((bin_dir.parent / "bench-ready.json").read_text())["freeze"]
    except (OSError, ValueError, KeyError):
        return {}
    wanted = {"mlserver", "mlserver-mlflow", "mlflow", "scikit-learn", "pandas", "numpy", "uvicorn"}
    pairs = (line.split("==", 1) for line in frozen if "==" in line)
    return {name.lower(): version for name, version in pairs if name.lower() in wanted}


def _last_error(log_path: Path) -> str:
    """The last line of a log that is not one of pip's warnings (the reason, usually)."""
    lines = [
        line.strip()
        for line in log_path.read_text(errors="replace").splitlines()
        if line.strip() and not line.startswith("WARNING:")
    ]
    return lines[-1][:300] if lines else "no output"


def _git(*args: str, cwd: Path = ROOT, timeout: float = 120) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise Unavailable(f"git {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout.strip()


def baseline_checkout(rev: str = BASELINE_REV, cache: Path = CACHE_DIR) -> tuple[Path, str]:
    """A worktree of this repository at ``rev`` (made once, detached); its path and commit.

    Raises:
        Unavailable: git is missing, or ``rev`` is not in this clone (a shallow one).
    """
    if shutil.which("git") is None:
        raise Unavailable("git is not installed")
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except Unavailable as exc:
        raise Unavailable(f"revision {rev!r} is not in this clone ({exc})") from None
    path = cache / f"api-{commit[:12]}"
    if (path / ".git").exists():
        try:
            if _git("rev-parse", "HEAD", cwd=path) == commit:
                return path, commit
        except Unavailable:
            pass
    cache.mkdir(parents=True, exist_ok=True)
    if path.exists():
        shutil.rmtree(path)
    _git("worktree", "prune")
    log.info("checking out %s (%s) into %s", rev, commit[:12], path)
    _git("worktree", "add", "--detach", str(path), commit)
    return path, commit
