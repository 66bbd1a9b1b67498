"""A constant Flask endpoint: what the HTTP stack costs, under gunicorn gthread or granian.

It reads the request body (as any endpoint must) and returns a fixed answer shaped
like ``/predict``'s, so the difference to the API is the cost of validation, the
model and the registry check, not of HTTP, WSGI or JSON framing. The online benchmark
runs it under stock gunicorn ``-k gthread`` and under granian ``--interface wsgi``
(``Workspace.constant_server``); ``bench.constant_rsgi`` answers the same bytes with no
Flask, under granian's RSGI.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

app = Flask(__name__)

ANSWER = json.dumps(
    {
        "model": {"name": "vertebral-column", "version": 1, "run_id": "constant"},
        "predictions": [
            {
                "label": "Normal",
                "probability": 0.9,
                "probabilities": {"Hernia": 0.05, "Normal": 0.9, "Spondylolisthesis": 0.05},
                "out_of_range": [],
            }
        ],
    }
).encode()


@app.post("/predict")
def predict() -> Response:
    """Drain the body, answer the constant."""
    request.get_data(cache=False)
    return Response(ANSWER, mimetype="application/json")


@app.get("/health")
def health() -> Response:
    """Liveness, for the harness's readiness check."""
    return Response(b'{"status": "ok"}', mimetype="application/json")
