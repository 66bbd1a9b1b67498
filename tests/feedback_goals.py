"""The two feedback goals of issue 25, measured (run alone: ``python tests/feedback_goals.py``).

- 10,000 labels in one call, joined to 100,000 captured requests and stored: <= 2 s
  (the CSV parsed, the join, the checks and the write; and the same through the API).
- A quality report over 100,000 labelled records: <= 1 s.

Starts a private embedded server (or uses MONGODB_URI). Not a test: timings on a shared
machine are figures to report, not assertions.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).parent))
from feedback_samples import NAME, publish  # noqa: E402
from registry_samples import CLASSES  # noqa: E402

from api.launcher import free_port  # noqa: E402
from conf.settings import EmbeddedSettings, MonitorSettings, load_settings  # noqa: E402
from registry_bridge import database  # noqa: E402
from registry_bridge.monitoring import feedback, feedback_rows, quality  # noqa: E402
from registry_bridge.monitoring.inference_log import INFERENCE_LOG, Entry, bucket  # noqa: E402
from registry_bridge.store import ModelStore  # noqa: E402

REQUESTS, PER_BUCKET, LABELS = 100_000, 500, 10_000


def captured(db, start: float) -> list[tuple[str, str]]:
    """REQUESTS single-record requests in buckets of PER_BUCKET; (id, decision) of each."""
    rng = np.random.default_rng(0)
    made = []
    for b in range(REQUESTS // PER_BUCKET):
        ids = [f"{random.getrandbits(128):032x}" for _ in range(PER_BUCKET)]
        decisions = [CLASSES[i] for i in rng.integers(0, 3, PER_BUCKET)]
        entries = [
            Entry(
                start + b + i / PER_BUCKET,
                "predict",
                rid,
                1.0,
                np.zeros((1, 6)),
                [d],
                np.full((1, 3), 1 / 3),
                None,
            )
            for i, (rid, d) in enumerate(zip(ids, decisions, strict=True))
        ]
        db[INFERENCE_LOG].insert_one(bucket(NAME, 1, [f"f{i}" for i in range(6)], CLASSES, entries))
        made += zip(ids, decisions, strict=True)
    return made


def csv_of(pairs) -> bytes:
    return ("request_id,label\n" + "".join(f"{rid},{label}\n" for rid, label in pairs)).encode()


def main() -> None:
    uri = os.environ.get("MONGODB_URI")
    embedded = None
    if not uri:
        embedded = EmbeddedSettings(port=free_port(), data_dir=Path(tempfile.mkdtemp()))
        database.start_embedded(embedded)
        uri = database.embedded_uri(embedded)
    client = MongoClient(uri, tz_aware=True)
    db_name = f"goals_{random.getrandbits(32):08x}"
    try:
        db = client[db_name]
        settings = load_settings(env={"MONGODB_URI": uri, "REGISTRY_DB": db_name})
        store = ModelStore(db, settings.registry)
        publish(store)
        start = time.time() - 3600
        made = captured(db, start)
        random.shuffle(made)
        rng = np.random.default_rng(1)
        calls = [made[i : i + LABELS] for i in range(0, REQUESTS, LABELS)]
        times = []
        for call in calls[:-1]:  # 9 calls through the store (CLI's path)
            truth = [(rid, d if rng.random() < 0.8 else CLASSES[0]) for rid, d in call]
            t0 = time.perf_counter()
            rows = feedback_rows.parse_labels_file(csv_of(truth))
            result = feedback.record_feedback(db, rows, name=NAME)
            times.append(time.perf_counter() - t0)
            assert result.stored == LABELS, result
        print(
            f"store: 10,000 labels parsed, joined, stored: "
            f"median {np.median(times):.3f} s, max {max(times):.3f} s ({len(times)} calls)"
        )
        from api import create_app

        app = create_app({"TESTING": True, "SETTINGS": replace(settings), "MONGO_CLIENT": client})
        body = {"labels": [{"request_id": rid, "label": d} for rid, d in calls[-1]]}
        t0 = time.perf_counter()
        answer = app.test_client().post("/feedback", json=body)
        api_s = time.perf_counter() - t0
        assert answer.status_code == 200 and answer.json["stored"] == LABELS, answer.json
        print(f"API: POST /feedback of 10,000 labels (JSON): {api_s:.3f} s")
        until = datetime.now(UTC)
        since = until - timedelta(hours=2)
        report_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            section = quality.quality_section(store, MonitorSettings(), NAME, since, until)
            report_times.append(time.perf_counter() - t0)
        [entry] = section["quality"]
        assert entry["labelled"] == REQUESTS, entry["labelled"]
        print(
            f"quality report over {entry['labelled']:,} labelled records: "
            f"median {np.median(report_times):.3f} s, max {max(report_times):.3f} s "
            f"(accuracy {entry['accuracy']:.3f}, coverage {entry['coverage']:.2f})"
        )
    finally:
        client.drop_database(db_name)
        client.close()
        if embedded is not None:
            database.stop_embedded(embedded)


if __name__ == "__main__":
    main()
