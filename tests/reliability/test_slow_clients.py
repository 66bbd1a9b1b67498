"""Point 5, slow and idle clients (issue 21, items 5-7 and 14): they cannot starve the API.

One ``python -m api`` (2 workers, the default settings: ``api.client_timeout_s`` 10 s,
as in the issue) is attacked, one kind at a time,
by another process holding connections from 8 loopback addresses
(``bench.slow_clients.ATTACKS``: slow heads, slow 4 MB ``Content-Length`` and chunked
bodies, ``Expect: 100-continue`` then silence, 2,000 idle connections, 200 bodies of
1 MB one byte short). Meanwhile one client sends ``/predict`` after ``/predict``, each on a
new connection. Every one must be answered within 5 s, the p99 must stay within
:data:`P99_FACTOR` x the p99 measured alone just before (plus :data:`P99_SLACK_MS`: the
2 cores are shared with other test runs), and no worker may grow by more than
:data:`RSS_BOUND_MB` (peak RSS, VmHWM, over its RSS before the attack).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from api_fixtures import publish_candidates
from conftest import throwaway_settings
from servers import ApiServer

from bench.slow_clients import ATTACKS, Attack, measure, raise_open_files
from conf.contract import FEATURES
from registry_bridge.store import ModelStore

AREA = "5 hostile input"
SECONDS = 4.0  # /predict measured under each attack (half that alone, just before)
P99_FACTOR = 2.0
P99_SLACK_MS = 10.0
# The worker's buffered-bytes cap (api.max_buffered_mb, 64 by default) and 32 MB for the
# connections' objects and the allocator. Without caps, 200 bodies of 1 MB held ~1.8 MB
# each (issue 21, item 7).
RSS_BOUND_MB = 96

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(
    mongo_client, mongo_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    db_name = f"test_{uuid.uuid4().hex[:12]}"
    settings = throwaway_settings(mongo_server.uri, db_name, tmp)
    publish_candidates(ModelStore(mongo_client, settings), settings)
    raise_open_files(4096)  # 2,000 attack connections, in a child that inherits this
    api = ApiServer(settings, tmp, workers=2)
    with api:
        yield api
    mongo_client.drop_database(db_name)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_predict_keeps_its_latency_under_slow_and_idle_clients(server, attack: Attack, figure):
    """Check that under each attack every /predict is answered within 5 s, its p99 stays
    within 2x (+10 ms) its p99 alone, and no worker's peak RSS grows by more than 96 MB."""
    assert server.process is not None
    body = json.dumps({name: 50.0 for name in FEATURES}).encode()
    result = measure(server.port, server.process.pid, body, attack, SECONDS)
    alone, loaded = result["alone"], result["under_attack"]
    bound = P99_FACTOR * alone["p99_ms"] + P99_SLACK_MS
    figure(f"/predict p99 alone, before: {attack.name} (ms)", alone["p99_ms"])
    figure(
        f"/predict p99 under: {attack.name} (ms)",
        loaded["p99_ms"],
        f"<= {P99_FACTOR:g} x alone + {P99_SLACK_MS:g}",
    )
    figure(f"/predict unanswered in 5 s under: {attack.name}", loaded["unanswered"], "= 0")
    figure(
        f"worker peak RSS growth under: {attack.name} (MB)",
        result["worker_peak_rss_growth_mb"],
        f"<= {RSS_BOUND_MB}",
    )
    counts = result["attack_counts"]
    assert counts.get("opened", 0) >= attack.count, counts  # the attack was there
    assert loaded["unanswered"] == 0, result
    assert loaded["requests"] >= 50, result
    assert loaded["p99_ms"] <= bound, result
    assert result["worker_peak_rss_growth_mb"] <= RSS_BOUND_MB, result
    assert "Traceback" not in server.log()
