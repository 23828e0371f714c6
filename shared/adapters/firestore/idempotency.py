"""Firestore adapter of the idempotency port: ``clients/{client}/idempotency_keys/{sha256(path, key)}``.

A record holds ``fingerprint``, ``state`` (pending/completed), ``created_at`` and ``expires_at`` (for a
Firestore TTL policy), plus ``status``, ``body`` and ``headers`` once completed. A claim is a ``create``
(exists precondition); a takeover is an ``update`` conditioned on the update time that was read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.idempotency import IdempotencyRecord, IdempotencyStore, StoredResponse

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreIdempotencyStore(IdempotencyStore):
    """Records in the client's own subtree, so keys never collide across tenants."""

    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self, client_id: str, key_hash: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("idempotency_keys").document(key_hash)

    def create(self, client_id: str, key_hash: str, record: IdempotencyRecord) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._ref(client_id, key_hash).create(_claim(record))
        except AlreadyExists:
            return False
        return True

    def get(self, client_id: str, key_hash: str) -> tuple[IdempotencyRecord, object] | None:
        snapshot = self._ref(client_id, key_hash).get()
        if not snapshot.exists:
            return None
        data = snapshot.to_dict() or {}
        response = None
        if "status" in data:
            response = StoredResponse(
                status=int(data["status"]), body=str(data.get("body", "")), headers=dict(data.get("headers", {}))
            )
        record = IdempotencyRecord(
            fingerprint=str(data.get("fingerprint", "")),
            state=str(data.get("state", "")),
            created_at=data["created_at"],
            expires_at=data["expires_at"],
            response=response,
        )
        return record, snapshot.update_time

    def replace(self, client_id: str, key_hash: str, record: IdempotencyRecord, version: object) -> bool:
        from google.api_core.exceptions import FailedPrecondition, NotFound
        from google.cloud.firestore import DELETE_FIELD

        fields = {**_claim(record), "status": DELETE_FIELD, "body": DELETE_FIELD, "headers": DELETE_FIELD}
        if record.response is not None:
            fields.update(_response(record.response))
        try:
            self._ref(client_id, key_hash).update(fields, option=self.db.write_option(last_update_time=version))
        except (FailedPrecondition, NotFound):  # changed (another attempt took it over) or deleted since read
            return False
        return True

    def complete(self, client_id: str, key_hash: str, response: StoredResponse) -> None:
        self._ref(client_id, key_hash).update({"state": "completed", **_response(response)})

    def delete(self, client_id: str, key_hash: str) -> None:
        self._ref(client_id, key_hash).delete()


def _claim(record: IdempotencyRecord) -> dict[str, Any]:
    return {
        "fingerprint": record.fingerprint,
        "state": record.state,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
    }


def _response(response: StoredResponse) -> dict[str, Any]:
    return {"status": response.status, "body": response.body, "headers": response.headers}
