"""``POST /feedback``: the true labels of captured requests (registry_bridge.monitoring.feedback).

JSON ``{"labels": [{"request_id", "label", "record"?}, ...]}``, or a CSV
(``request_id,label[,record]``) as a ``text/csv`` body or the multipart field ``file``;
at most ``MAX_LABELS`` labels and ``MAX_FEEDBACK_BYTES`` per call. ``?name=`` keeps the
join to one model name; ``?unknown=skip`` reports ids with no captured request instead
of refusing the call. Needs the admin token or ``api.feedback_token`` when either is set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api import registry
from api.body import read_body
from api.models import bearer_refusal
from api.validation import parse_json
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring import feedback, feedback_rows
from registry_bridge.store import checked_name

bp = Blueprint("feedback", __name__)

_MULTIPART_OVERHEAD = 64 * 1024  # the form's boundaries and part headers around the file


def feedback_required(view: Callable[..., Response]) -> Callable[..., Response]:
    """Require the admin token or the feedback token, when either is configured."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Response:
        api = registry().settings.api
        refused = bearer_refusal(
            [api.admin_token, api.feedback_token],
            "<API_ADMIN_TOKEN or API_FEEDBACK_TOKEN>",
            "feedback",
            "the admin token or the feedback token",
        )
        return refused if refused is not None else view(*args, **kwargs)

    return wrapped


@bp.post("/feedback")
@feedback_required
def post_feedback() -> Response:
    """Store labels joined to their captured requests: all of them, or none (400 per row)."""
    name = request.args.get("name")
    if name is not None:
        name = checked_name(name)
    unknown = request.args.get("unknown", "refuse")
    if unknown not in ("refuse", "skip"):
        raise RegistryError(
            "INVALID_INPUT",
            f"unknown must be refuse or skip, got {feedback_rows.echoed(unknown, 40)!r}",
            [{"field": "unknown", "problem": "not refuse or skip"}],
        )
    rows = _rows()
    result = feedback.record_feedback(
        registry().store.db,
        rows,
        name=name,
        by=f"api:{request.remote_addr or 'unknown'}",
        skip_unknown=unknown == "skip",
    )
    return jsonify(result.to_dict())


def _rows() -> list[feedback_rows.LabelRow]:
    """The call's label rows, from whichever body it sent."""
    media = request.mimetype
    if request.is_json:
        return feedback_rows.parse_json_labels(
            parse_json(read_body(feedback_rows.MAX_FEEDBACK_BYTES))
        )
    if media == "text/csv":
        return feedback_rows.parse_labels_file(
            bytes(read_body(feedback_rows.MAX_FEEDBACK_BYTES)), "csv"
        )
    if media == "multipart/form-data":
        declared = request.content_length
        if declared is None or declared > feedback_rows.MAX_FEEDBACK_BYTES + _MULTIPART_OVERHEAD:
            raise feedback_rows.too_large()
        upload = request.files.get("file")
        if upload is None:
            raise RegistryError(
                "INVALID_INPUT",
                "the multipart form has no field 'file' holding the CSV",
                [{"field": "file", "problem": "missing"}],
            )
        return feedback_rows.parse_labels_file(
            upload.read(feedback_rows.MAX_FEEDBACK_BYTES + 1), "csv"
        )
    raise RegistryError(
        "UNSUPPORTED_MEDIA_TYPE",
        f"Content-Type {media or 'none'} is not accepted here; send application/json, "
        "text/csv or multipart/form-data with a field 'file'",
    )
