"""RFC 9457 problem details: the one error shape every HTTP response uses."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shared.errors import EpoxError

if TYPE_CHECKING:
    from flask import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://docs.epox.ai/problems/"


def problem_body(error: EpoxError, *, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    """The JSON members of a problem: standard ones first, then ``code`` and the error's extensions."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code.replace("_", "-"),
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    for key, value in error.extensions.items():
        body.setdefault(key, value)
    return body


def problem_response(error: EpoxError, *, instance: str | None = None, request_id: str | None = None) -> Response:
    from flask import Response

    payload = json.dumps(problem_body(error, instance=instance, request_id=request_id), default=str)
    response = Response(payload, status=error.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in error.headers.items():
        response.headers[name] = value
    return response
