"""Edit API steps shared by the edit tests: run a job to its end, and read a revision back through
its presigned download URL, as the browser would.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
from PIL import Image

from tests import images


def run_job(stack: Any, edit: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    """Deliver every queued task, then the edit job as the API shows it."""
    stack.run_tasks()
    response = edit.get(f"/edits/{job_id}", headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fetch(url: str) -> httpx.Response:
    """GET a presigned URL (outside any proxy settings); it must answer 200."""
    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200, response.text[:300]
    return response


def download(url: str) -> Image.Image:
    return images.decode(fetch(url).content)


def stored_revision(catalog: Any, headers: dict[str, str], asset_id: str, number: int) -> tuple[Image.Image, str]:
    """The revision's image, downloaded through its presigned URL, and the Content-Type it is served with."""
    detail = catalog.get(f"/assets/{asset_id}", headers=headers)
    assert detail.status_code == 200, detail.json
    url = next(r["url"] for r in detail.json["revisions"] if r["number"] == number)
    response = fetch(url)
    return images.decode(response.content), response.headers["content-type"]


def revision_image(catalog: Any, headers: dict[str, str], asset_id: str, number: int) -> Image.Image:
    return stored_revision(catalog, headers, asset_id, number)[0]
