"""The frontend's steps of a CSV import (upload, draft, start, read back) and what tests look at
in between: the import's chunk tasks in the local dispatcher, a small CSV to import."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import httpx

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@dataclass
class Api:
    stack: Any
    client_id: str

    def __post_init__(self) -> None:
        self.http = self.stack.client("catalog_api")
        self.headers = self.stack.headers(self.client_id)

    def get(self, path: str) -> Any:
        return self.http.get(path, headers=self.headers)

    def post(self, path: str, body: Any = None) -> Any:
        return self.http.post(path, json=body, headers=self.headers)

    def patch(self, path: str, body: Any) -> Any:
        return self.http.patch(path, json=body, headers=self.headers)

    def upload(self, data: bytes, filename: str = "products.csv", content_type: str = "text/csv") -> tuple[str, Any]:
        """Create the upload slot, PUT the bytes to R2 and complete; returns the id and the answer."""
        created = self.post(
            "/uploads",
            {"filename": filename, "content_type": content_type, "size_bytes": len(data), "purpose": "csv_import"},
        )
        assert created.status_code == 201, created.json
        instructions = created.json["upload"]
        put = httpx.put(instructions["url"], content=data, headers=instructions["headers"], trust_env=False, timeout=10)
        assert put.status_code == 200, put.text
        return created.json["id"], self.post(f"/uploads/{created.json['id']}/complete")

    def draft(self, data: bytes, **options: Any) -> dict[str, Any]:
        """Upload ``data`` (a CSV; an .xlsx workbook when it is a ZIP) and create a draft import of it;
        ``options`` go into the draft's request (sheet, mapping, ...)."""
        if data.startswith(b"PK"):
            upload_id, completed = self.upload(data, "products.xlsx", XLSX)
        else:
            upload_id, completed = self.upload(data)
        assert completed.status_code == 200, completed.json
        assert completed.json["status"] == "completed"
        created = self.post("/imports", {"upload_id": upload_id, **options})
        assert created.status_code == 201, created.json
        assert created.json["status"] == "draft"
        return dict(created.json)

    def start(self, import_id: str) -> dict[str, Any]:
        started = self.post(f"/imports/{import_id}/start")
        assert started.status_code == 202, started.json
        return dict(started.json)

    def run(self, data: bytes) -> dict[str, Any]:
        """Draft, start and run an import with the detected mapping; returns the final import."""
        import_id = self.draft(data)["id"]
        self.start(import_id)
        self.stack.run_tasks()
        return self.import_(import_id)

    def import_(self, import_id: str) -> dict[str, Any]:
        got = self.get(f"/imports/{import_id}")
        assert got.status_code == 200, got.json
        return dict(got.json)

    def report(self, import_id: str) -> list[dict[str, str]]:
        response = self.get(f"/imports/{import_id}/errors.csv")
        assert response.status_code == 200
        assert response.mimetype == "text/csv"
        rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
        assert rows[0] == ["row", "level", "code", "message"]
        return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]

    def products(self) -> list[dict[str, Any]]:
        listed = self.get("/products?limit=100")
        assert listed.status_code == 200, listed.json
        assert listed.json["next_cursor"] is None
        return list(listed.json["items"])

    def products_by_sku(self) -> dict[str, dict[str, Any]]:
        items = self.products()
        by_sku = {p["sku"]: p for p in items}
        assert len(by_sku) == len(items), "two products with one SKU"
        return by_sku

    def assets(self) -> list[dict[str, Any]]:
        listed = self.get("/assets?limit=100")
        assert listed.status_code == 200, listed.json
        return list(listed.json["items"])


def chunk_tasks(dispatcher: Any, import_id: str) -> dict[int, list[Any]]:
    """The dispatcher's chunk tasks of one import by chunk number (several if re-submitted)."""
    found: dict[int, list[Any]] = {}
    for task in dispatcher.history:
        body = json.loads(task.body)
        if task.url.endswith("/tasks/import-chunk") and body["import_id"] == import_id:
            found.setdefault(body["chunk"], []).append(task)
    return found


def simple_csv(rows: list[tuple[str, str, str]]) -> bytes:
    """A name,sku,image CSV of ``rows``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["name", "sku", "image"])
    writer.writerows(rows)
    return buffer.getvalue().encode()
