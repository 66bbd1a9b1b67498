"""The demo's ``bridge`` commands run in its own process (``demo.__main__.run_bridge``):
each must still behave as typed in a shell, its outputs, exit status and log lines its
own, the demo's environment and logging as they were."""

from __future__ import annotations

import logging
import os

from test_webhooks import NAME, publish

from demo.__main__ import run_bridge
from registry_bridge.store import ModelStore


def test_a_command_runs_as_in_a_shell_and_leaves_the_process_as_it_was(
    settings, registry_db_name, registry_db
):
    """Check exit status 0, 1 and 2 with their outputs, the command's environment (its user
    and MODEL_NAME) and its log lines on its own stderr; afterwards the process's
    environment and root logger are those it had before."""
    store = ModelStore(registry_db, settings)
    publish(store, "run-a")
    publish(store, "run-b", seed=1)
    env = {
        **os.environ,
        "MONGODB_URI": settings.registry.mongodb_uri or "",
        "REGISTRY_DB": registry_db_name,
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "MODEL_NAME": NAME,
        "REGISTRY_USER": "demo-runner",
    }
    environ, root = dict(os.environ), logging.getLogger()
    handlers, level = root.handlers[:], root.level

    code, out, err = run_bridge(["-v", "activate", "2", "--reason", "demo"], env)
    assert code == 0, out + err
    assert f"activated {NAME} v2" in out
    assert f"activate {NAME}: vNone -> v2 by demo-runner" in err  # its -v log line, its stderr
    assert store.get_active_version(NAME).active_version == 2

    code, out, err = run_bridge(["activate", NAME, "9"], env)
    assert code == 1 and err.startswith("error: ") and "9" in err, out + err
    code, out, err = run_bridge(["activate"], env)
    assert code == 2 and "missing argument VERSION" in err

    assert dict(os.environ) == environ
    assert root.handlers == handlers and root.level == level
