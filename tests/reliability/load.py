"""Closed-loop HTTP load for the reliability tests: clients, an activation flipper, and the checks.

Each client thread keeps one connection and sends ``/predict`` with a random handful of
test rows; every answer is kept with its start and end time so the tests can check it
against the version it names (probabilities computed here, with onnxruntime, from the
published ONNX bytes) and against the moments activations returned.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import requests
from api_fixtures import FAMILIES, MODEL, Published, record

ROWS_PER_REQUEST = (1, 4)
RECONNECT_EVERY = 5


@dataclass
class Answer:
    """One /predict exchange as the client saw it."""

    started: float
    ended: float
    status: int  # 0: no HTTP answer (connection error)
    rows: list[int]
    version: int | None = None
    stale: bool = False
    worker: str | None = None
    probabilities: list[list[float]] | None = None
    error: str | None = None


@dataclass
class Activation:
    """One POST /models/activate as the flipper saw it."""

    started: float
    ended: float
    target: int
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def expected_probabilities(published: Published) -> dict[int, np.ndarray]:
    """Per version, the probabilities of every test row, from its published ONNX bytes."""
    expected = {}
    for family in FAMILIES:
        candidate = published.candidates[family]
        session = ort.InferenceSession(candidate.artifact, providers=["CPUExecutionProvider"])
        _, probabilities = session.run(
            ["label", "probabilities"], {"input": published.inputs.astype(np.float32)}
        )
        expected[published.versions[family]] = np.asarray(probabilities, dtype=np.float64)
    return expected


def distinguishing_rows(expected: dict[int, np.ndarray], margin: float = 1e-3) -> list[int]:
    """Rows whose probabilities differ between the versions (so a mixed answer shows)."""
    first, second = expected.values()
    return [int(i) for i in np.flatnonzero(np.abs(first - second).max(axis=1) > margin)]


class Load:
    """``clients`` threads posting /predict to ``base`` until ``stop()``."""

    def __init__(
        self, base: str, published: Published, rows: list[int], clients: int = 8, seed: int = 0
    ):
        self.base = base
        self.inputs = published.inputs
        self.rows = rows
        self.clients = clients
        self.seed = seed
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _client(self, number: int) -> None:
        rng = random.Random(self.seed * 100 + number)
        session = requests.Session()
        found: list[Answer] = []
        sent = 0
        while not self._stop.is_set():
            rows = rng.sample(self.rows, rng.randint(*ROWS_PER_REQUEST))
            body = {"records": [record(self.inputs[i]) for i in rows]}
            sent += 1
            # A fresh connection now and then, so the kernel spreads clients over the workers.
            headers = {"Connection": "close"} if sent % RECONNECT_EVERY == 0 else {}
            started = time.monotonic()
            try:
                response = session.post(
                    f"{self.base}/predict", json=body, timeout=15, headers=headers
                )
            except requests.RequestException as exc:
                found.append(Answer(started, time.monotonic(), 0, rows, error=repr(exc)))
                session = requests.Session()
                continue
            answer = Answer(
                started,
                time.monotonic(),
                response.status_code,
                rows,
                stale=response.headers.get("X-Model-Stale") == "true",
                worker=response.headers.get("X-Worker-Pid"),
            )
            if response.status_code == 200:
                payload = response.json()
                answer.version = payload["model"]["version"]
                answer.probabilities = [
                    [p["probabilities"][c] for c in p["probabilities"]]
                    for p in payload["predictions"]
                ]
                if response.headers.get("X-Model-Version") != str(answer.version):
                    answer.error = "X-Model-Version header differs from the body"
            else:
                answer.error = response.text[:300]
            found.append(answer)
        with self._lock:
            self.answers.extend(found)

    def start(self) -> Load:
        self._threads = [
            threading.Thread(target=self._client, args=(n,), daemon=True)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.answers.sort(key=lambda a: a.started)
        return self.answers


def activate(
    base: str, version: int, token: str | None = None, reason: str = "reliability flip"
) -> Activation:
    """POST /models/activate, timed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        response = requests.post(
            f"{base}/models/activate",
            timeout=30,
            headers=headers,
            json={"name": MODEL, "version": version, "reason": reason},
        )
        status, body = response.status_code, response.json()
    except (requests.RequestException, ValueError) as exc:
        status, body = 0, {"error": repr(exc)}
    return Activation(started, time.monotonic(), version, status, body)


def mismatches(
    answers: list[Answer], expected: dict[int, np.ndarray], tolerance: float = 1e-6
) -> list[str]:
    """Answers whose probabilities are not those of the version they name, row by row."""
    found = []
    for answer in answers:
        if answer.status != 200:
            continue
        if answer.version not in expected:
            found.append(f"unknown version {answer.version}")
            continue
        got = np.asarray(answer.probabilities, dtype=np.float64)
        want = expected[answer.version][answer.rows]
        if got.shape != want.shape or np.abs(got - want).max() > tolerance:
            found.append(
                f"rows {answer.rows} named v{answer.version} but differ by "
                f"{np.abs(got - want).max() if got.shape == want.shape else got.shape}"
            )
    return found


def stale_after_activation(answers: list[Answer], activations: list[Activation]) -> list[str]:
    """Answers that began after an activation returned (and before the next one started)
    yet were served by another version without being marked stale.

    (A worker whose pointer read took longer than its check timeout serves the version
    it has, marked ``X-Model-Stale``, for a back-off second: the client is told.)"""
    done = sorted((a for a in activations if a.status == 200), key=lambda a: a.started)
    found = []
    for current, following in zip(done, done[1:] + [None], strict=False):
        until = following.started if following else float("inf")
        for answer in answers:
            if (
                answer.status == 200
                and not answer.stale
                and current.ended < answer.started
                and answer.ended < until
                and answer.version != current.target
            ):
                found.append(
                    f"request at {answer.started:.3f} served v{answer.version} after "
                    f"v{current.target} was activated at {current.ended:.3f}"
                )
    return found


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Latency percentiles in milliseconds, plus the maximum."""
    array = np.asarray(values, dtype=np.float64) * 1000
    found = {f"p{p}": float(np.percentile(array, p)) for p in points}
    found["max"] = float(array.max())
    return found


def run_for(
    seconds: float,
    step: Callable[[], Any],
    interval: float,
    *,
    at_least: int = 0,
    give_up_after: float | None = None,
) -> int:
    """Call ``step`` every ``interval`` seconds for ``seconds``; the number of calls.

    With ``at_least``, keep calling past ``seconds`` until that many calls were made
    (a busy machine makes each step slower, not the property under test weaker), but
    never past ``give_up_after`` seconds, so the caller's count check still fails."""
    started = time.monotonic()
    deadline = started + seconds
    hard_stop = started + (give_up_after if give_up_after is not None else seconds)
    calls = 0
    while True:
        now = time.monotonic()
        if now >= hard_stop or (now >= deadline and calls >= at_least):
            return calls
        began = now
        step()
        calls += 1
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
