"""Product writes under contention retry with the project's one retry policy (shared/retry.py):
concurrent edits of one product all land (each re-reads and commits on top of the last), and the
contention shows in the logs."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest


def test_concurrent_updates_of_one_product_all_land(
    stack: Any, client_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = stack.client("catalog_api")
    headers = stack.headers(client_id)
    created = catalog.post("/products", json={"name": "Mug"}, headers=headers)
    assert created.status_code == 201, created.json
    product_id = created.json["id"]

    writers = 12
    barrier = threading.Barrier(writers)
    answers: list[Any] = [None] * writers

    def update(index: int) -> None:
        client = stack.client("catalog_api")
        barrier.wait()
        response = client.patch(f"/products/{product_id}", json={"sku": f"SKU-{index}"}, headers=headers)
        answers[index] = (response.status_code, response.json)

    with caplog.at_level(logging.INFO, logger="shared.retry"):
        threads = [threading.Thread(target=update, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    # Five tries without a pause used to give up under this contention (409 "changed concurrently").
    assert [status for status, _ in answers] == [200] * writers, answers
    final = catalog.get(f"/products/{product_id}", headers=headers).json
    assert final["sku"] in {f"SKU-{i}" for i in range(writers)}
    # Search tokens were recomputed on the last write (the guarded commit saw the current document).
    stored = stack.platform.db.collection("clients").document(client_id).collection("products").document(product_id)
    assert final["sku"].lower() in stored.get().to_dict()["search_tokens"]
    assert any("contended: product update" in record.getMessage() for record in caplog.records)
