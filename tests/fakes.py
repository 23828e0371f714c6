"""Fakes for unit tests: real subclasses of the ports, holding state in memory."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

from shared.billing.gateway import CheckoutLine, PaymentGateway, SubscriptionInfo
from shared.billing.models import BillingState
from shared.billing.store import (
    DELETE,
    BillingChanged,
    BillingSnapshot,
    BillingStore,
    EventWrite,
    PackPurchase,
)
from shared.ledger.model import Entry, HoldOutcome, LedgerState, Mutation
from shared.ledger.store import HoldRecord, KeyAlreadyUsed, LedgerStore, Marker, Snapshot, StaleState, key_hash
from shared.safe_fetch import Resolver
from shared.storage import (
    CHUNK_BYTES,
    MIN_PART_BYTES,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PresignedUpload,
    UploadedPart,
)
from shared.tasks import TaskQueue, TaskRequest


class InMemoryObjectStore(ObjectStore):
    """Objects in a dict; multipart uploads keep their parts until completed (R2's rules: parts but
    the last at least 5 MiB, an unknown upload id is NoSuchUpload)."""

    def __init__(self, *, min_part_bytes: int = MIN_PART_BYTES) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.uploads: dict[str, tuple[str, str, dict[int, bytes]]] = {}  # upload id -> (key, type, parts)
        self.aborted: list[str] = []
        self.min_part_bytes = min_part_bytes

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        self.objects[key] = (data, content_type)

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound(f"No object at {key}")
        data = self.objects[key][0]
        return data if max_bytes is None else data[: max_bytes + 1]

    def head(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        data, content_type = self.objects[key]
        return ObjectInfo(key=key, size=len(data), content_type=content_type, etag=str(hash(data)))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def presigned_get(self, key: str, *, expires_in: int, download_name: str | None = None) -> str:
        return f"memory://{quote(key)}?expires={expires_in}"

    def presigned_put(self, key: str, *, content_type: str, content_length: int, expires_in: int) -> PresignedUpload:
        return PresignedUpload(
            url=f"memory://{quote(key)}",
            method="PUT",
            headers={"Content-Type": content_type, "Content-Length": str(content_length)},
            expires_in=expires_in,
        )

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        if key not in self.objects:
            raise ObjectNotFound(f"No object at {key}")
        data = self.objects[key][0]
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def start_multipart(self, key: str, content_type: str) -> str:
        upload_id = secrets.token_hex(8)
        self.uploads[upload_id] = (key, content_type, {})
        return upload_id

    def _upload(self, key: str, upload_id: str) -> dict[int, bytes]:
        entry = self.uploads.get(upload_id)
        if entry is None or entry[0] != key:
            raise ObjectNotFound(f"No upload {upload_id} to {key}")
        return entry[2]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        if not 1 <= number <= 10_000:
            raise ValueError(f"part number {number} out of range")
        self._upload(key, upload_id)[number] = bytes(data)
        return UploadedPart(number=number, etag=f"{hash(bytes(data)) & 0xFFFFFFFF:08x}-{number}")

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        stored = self._upload(key, upload_id)
        ordered = sorted(parts, key=lambda part: part.number)
        for index, part in enumerate(ordered):
            data = stored.get(part.number)
            if data is None or part.etag != f"{hash(data) & 0xFFFFFFFF:08x}-{part.number}":
                raise ValueError(f"part {part.number} is not the one uploaded")
            if index < len(ordered) - 1 and len(data) < self.min_part_bytes:
                raise ValueError(f"part {part.number} is smaller than {self.min_part_bytes} bytes")
        content_type = self.uploads.pop(upload_id)[1]
        self.objects[key] = (b"".join(stored[part.number] for part in ordered), content_type)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        if self.uploads.pop(upload_id, None) is not None:
            self.aborted.append(upload_id)


class RecordingTaskQueue(TaskQueue):
    """Keeps tasks; drops a second task with a name it has seen, like Cloud Tasks."""

    def __init__(self) -> None:
        self.tasks: list[TaskRequest] = []
        self.names: set[str] = set()

    def enqueue(self, task: TaskRequest) -> bool:
        if task.name is not None:
            if task.name in self.names:
                return False
            self.names.add(task.name)
        self.tasks.append(task)
        return True


class StaticResolver(Resolver):
    """DNS from a dict, so tests can point names at loopback or at private addresses."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def resolve(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if host not in self.table:
            from shared.safe_fetch import FetchFailed

            raise FetchFailed(f"cannot resolve {host}")
        return [ipaddress.ip_address(address) for address in self.table[host]]


class InMemoryLedgerStore(LedgerStore):
    """The ledger port in memory, with the same all-or-nothing and precondition semantics."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.states: dict[str, tuple[LedgerState, int]] = {}
        self.markers: dict[tuple[str, str], Marker] = {}
        self.entry_log: dict[str, list[Entry]] = {}
        self.holds: dict[tuple[str, str], dict[str, Any]] = {}
        self.notifications: dict[str, list[Any]] = {}
        self.state_writes: dict[str, int] = {}

    def load(self, client_id: str, key: str, hold_id: str | None = None) -> Snapshot:
        with self._lock:
            state, version = self.states.get(client_id, (LedgerState(client_id=client_id), 0))
            hold = None
            record = self.holds.get((client_id, hold_id)) if hold_id else None
            if record and record.get("status") in ("captured", "released"):
                hold = HoldOutcome.model_validate(record["outcome"])
            return Snapshot(
                state=state.model_copy(deep=True),
                version=version,
                marker=self.markers.get((client_id, key_hash(key))),
                hold=hold,
            )

    def commit(
        self,
        client_id: str,
        snapshot: Snapshot,
        mutation: Mutation,
        *,
        key: str,
        fingerprint: str,
        hold: HoldRecord | None,
    ) -> None:
        with self._lock:
            if (client_id, key_hash(key)) in self.markers:
                raise KeyAlreadyUsed()
            _, version = self.states.get(client_id, (None, 0))
            if version != snapshot.version:
                raise StaleState()
            self.states[client_id] = (mutation.state.model_copy(deep=True), version + 1)
            self.state_writes[client_id] = self.state_writes.get(client_id, 0) + 1
            self.markers[(client_id, key_hash(key))] = Marker(fingerprint=fingerprint, result=mutation.result)
            self.entry_log.setdefault(client_id, []).extend(mutation.entries)
            if hold is not None:
                self.holds.setdefault((client_id, hold.hold_id), {}).update(hold.data)
            self.notifications.setdefault(client_id, []).extend(mutation.notifications)

    def entries(self, client_id: str) -> list[Entry]:
        with self._lock:
            return list(self.entry_log.get(client_id, []))

    def state(self, client_id: str) -> LedgerState:
        with self._lock:
            return self.states.get(client_id, (LedgerState(client_id=client_id), 0))[0].model_copy(deep=True)


class InMemoryBillingStore(BillingStore):
    """The billing port in memory: raw client records with a version counter, the event markers and
    the Stripe indexes, with the Firestore adapter's all-or-nothing commit and precondition."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.clients: dict[str, tuple[dict[str, Any], int]] = {}  # client id -> (record, version)
        self.events: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, str] = {}
        self.payments: dict[str, tuple[str, str]] = {}  # payment intent -> (client id, session id)
        self.purchases: dict[tuple[str, str], dict[str, Any]] = {}
        self.notifications: dict[str, dict[str, dict[str, Any]]] = {}
        self.outbox: list[Any] = []

    def _billing(self, client_id: str) -> dict[str, Any]:
        record, _ = self.clients.get(client_id, ({}, 0))
        return dict(record.get("billing") or {})

    def billing(self, client_id: str) -> BillingState:
        with self._lock:
            return BillingState.model_validate(self._billing(client_id))

    def event_recorded(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self.events

    def client_of_customer(self, customer_id: str) -> str | None:
        with self._lock:
            return self.customers.get(customer_id)

    def read(self, client_id: str) -> BillingSnapshot:
        with self._lock:
            exists = client_id in self.clients
            state = BillingState.model_validate(self._billing(client_id))
            return BillingSnapshot(state=state, version=self.clients[client_id][1] if exists else None)

    def pack_purchase(self, payment_intent: str) -> PackPurchase | None:
        with self._lock:
            link = self.payments.get(payment_intent)
            purchase = self.purchases.get(link) if link else None
            if link is None or purchase is None:
                return None
            return PackPurchase(link[0], link[1], int(purchase["credits"]), str(purchase["bucket_id"]))

    def _apply(self, client_id: str, changes: dict[str, Any]) -> None:
        record, version = self.clients.get(client_id, ({}, 0))
        record = dict(record)
        billing = dict(record.get("billing") or {})
        for name, value in changes.items():
            if value is DELETE:
                billing.pop(name, None)
            else:
                billing[name] = value
        record["billing"] = billing
        if "plan" in changes:
            record["plan"] = changes["plan"]
        self.clients[client_id] = (record, version + 1)

    def commit(self, write: EventWrite) -> bool:
        with self._lock:
            if write.event_id in self.events:
                return False
            client_id = write.client_id
            if client_id and write.changes and write.version is not None:
                current = self.clients.get(client_id, ({}, None))[1]
                if current != write.version:
                    raise BillingChanged()
            self.events[write.event_id] = {"type": write.event_type, "client_id": client_id, "outcome": write.outcome}
            if not client_id:
                return True
            if write.changes:
                self._apply(client_id, write.changes)
            if write.customer_link:
                self.customers[write.customer_link] = client_id
            if write.purchase is not None:
                key = (client_id, str(write.purchase["session_id"]))
                self.purchases[key] = {**self.purchases.get(key, {}), **write.purchase}
            if write.payment_link is not None:
                self.payments[write.payment_link[0]] = (client_id, write.payment_link[1])
            if write.refund is not None:
                session, refunded, revoked = write.refund
                purchase = self.purchases.setdefault((client_id, session), {})
                purchase["refunded_amount"] = max(refunded, int(purchase.get("refunded_amount", 0)))
                purchase["revoked_credits"] = max(revoked, int(purchase.get("revoked_credits", 0)))
            for doc_id, notice in write.notices:
                self.notifications.setdefault(client_id, {})[doc_id] = {**notice.model_dump(), "read": False}
            self.outbox.extend(write.events)  # the domain events, with the change
            return True

    def due_plan_changes(self, now: Any) -> list[tuple[str, Any]]:
        with self._lock:
            found = []
            for client_id in self.clients:
                billing = self._billing(client_id)
                due = billing.get("pending_plan_at")
                if due is not None and due <= now:
                    found.append((client_id, billing))
            return found

    def annual_clients(self) -> list[tuple[str, Any]]:
        with self._lock:
            return [(c, self._billing(c)) for c in self.clients if self._billing(c).get("interval") == "annual"]

    def free_clients(self) -> list[str]:
        with self._lock:
            return [c for c in self.clients if self._billing(c).get("plan") == "free"]

    def update_billing(self, client_id: str, changes: dict[str, Any], version: Any) -> None:
        with self._lock:
            if client_id not in self.clients or self.clients[client_id][1] != version:
                raise BillingChanged()
            self._apply(client_id, changes)


class RecordingPaymentGateway(PaymentGateway):
    """The payment port for the webhook's calls: cancellations and refunds are recorded, and the
    subscriptions it knows about (``live``) stop being live when cancelled, as Stripe's do."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.cancelled: list[str] = []
        self.refunded: list[str] = []  # invoice ids, each refunded once

    def create_customer(self, client_id: str, email: str | None, attempt: int = 0) -> str:
        return f"cus_{client_id}"

    def create_checkout(
        self,
        *,
        client_id: str,
        customer_id: str,
        mode: str,
        line: CheckoutLine,
        success_url: str,
        cancel_url: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> tuple[str, str]:
        return f"cs_{idempotency_key}", f"https://checkout.test/{idempotency_key}"

    def create_portal(self, customer_id: str, return_url: str) -> str:
        return f"https://portal.test/{customer_id}"

    def list_invoices(
        self, customer_id: str, limit: int, starting_after: str | None
    ) -> tuple[list[dict[str, Any]], bool]:
        return [], False

    def subscription(self, subscription_id: str) -> SubscriptionInfo | None:
        return SubscriptionInfo("active" if subscription_id in self.live else "canceled")

    def cancel_subscription(self, subscription_id: str) -> bool:
        if subscription_id not in self.live:
            return False
        self.live.discard(subscription_id)
        self.cancelled.append(subscription_id)
        return True

    def refund_invoice(self, invoice_id: str, *, reason: str) -> list[str]:
        if invoice_id in self.refunded:
            return []
        self.refunded.append(invoice_id)
        return [f"re_{invoice_id}"]
