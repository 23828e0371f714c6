"""The ledger's store on Firestore: ``clients/{c}/ledger/state``, ``ledger_entries/{seq}``,
``ledger_keys/{sha256}``, ``ledger_holds/{id}``, ``ledger_checkpoints/verify``, and the balance
crossings' events in ``outbox/{id}``
(the port and its rules are :mod:`shared.ledger.store`); its read side (history, usage, client
records, the clients the scheduled jobs visit); and the admin's price override ``settings/prices``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.adapters.firestore.outbox import write_events
from shared.events.outbox import EventKicker, NoKick
from shared.ledger.model import (
    Checkpoint,
    Entry,
    EntryType,
    HoldOutcome,
    HoldStatus,
    LedgerState,
    Mutation,
    threshold_events,
)
from shared.ledger.pricing import PriceList, PriceOverrides
from shared.ledger.store import (
    DueField,
    EntryFilter,
    HoldRecord,
    KeyAlreadyUsed,
    LedgerReader,
    LedgerStore,
    Marker,
    Snapshot,
    StaleState,
    key_hash,
)

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreLedgerStore(LedgerStore):
    """``clients/{c}/ledger/state``, ``ledger_entries/{seq}``, ``ledger_keys/{sha256}``,
    ``ledger_holds/{id}``, ``notifications/{…}``, ``ledger_checkpoints/verify``."""

    def __init__(self, db: Client, kicker: EventKicker | None = None) -> None:
        self.db = db
        self.kicker = kicker or NoKick()

    def _client(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id)

    def _state_ref(self, client_id: str) -> Any:
        return self._client(client_id).collection("ledger").document("state")

    def load(self, client_id: str, key: str, hold_id: str | None = None) -> Snapshot:
        client = self._client(client_id)
        refs = [self._state_ref(client_id), client.collection("ledger_keys").document(key_hash(key))]
        if hold_id:
            refs.append(client.collection("ledger_holds").document(hold_id))
        by_path = {snap.reference.path: snap for snap in self.db.get_all(refs)}
        state_snap = by_path[refs[0].path]
        if state_snap.exists:
            state = LedgerState.model_validate(state_snap.to_dict())
            version = state_snap.update_time
        else:
            state, version = LedgerState(client_id=client_id), None
        marker_snap = by_path[refs[1].path]
        marker = None
        if marker_snap.exists:
            data = marker_snap.to_dict() or {}
            marker = Marker(fingerprint=str(data.get("fingerprint")), result=dict(data.get("result") or {}))
        hold = None
        if hold_id:
            hold_snap = by_path[refs[2].path]
            record = (hold_snap.to_dict() or {}) if hold_snap.exists else {}
            if record.get("status") in (HoldStatus.CAPTURED.value, HoldStatus.RELEASED.value):
                hold = HoldOutcome.model_validate(record["outcome"])
        return Snapshot(state=state, version=version, marker=marker, hold=hold)

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
        from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition, NotFound

        client = self._client(client_id)
        state_ref = self._state_ref(client_id)
        batch = self.db.batch()
        state_data = mutation.state.model_dump(mode="python")
        if snapshot.version is None:
            batch.create(state_ref, state_data)
        else:
            batch.update(state_ref, state_data, option=self.db.write_option(last_update_time=snapshot.version))
        marker_ref = client.collection("ledger_keys").document(key_hash(key))
        now = mutation.state.updated_at
        batch.create(
            marker_ref,
            {
                "key": key[:1500],
                "fingerprint": fingerprint,
                "result": mutation.result,
                "created_at": now,
                "entry_seqs": [e.seq for e in mutation.entries],
            },
        )
        for entry in mutation.entries:
            batch.create(
                client.collection("ledger_entries").document(f"{entry.seq:012d}"), entry.model_dump(mode="python")
            )
        if hold is not None:
            batch.set(client.collection("ledger_holds").document(hold.hold_id), hold.data, merge=True)
        events = threshold_events(client_id, mutation)  # credits.low / credits.depleted, in this commit
        write_events(self.db, batch, events)
        try:
            batch.commit()
        except (FailedPrecondition, NotFound, Aborted) as exc:
            # Aborted: contention on the hot state document ("Too much contention", or the emulator's
            # "Transaction lock timeout"); nothing was written, so read again and retry like a lost race.
            raise StaleState() from exc
        except AlreadyExists as exc:
            # Either the marker (applied before) or the state doc/entry (a concurrent first writer).
            if marker_ref.get().exists:
                raise KeyAlreadyUsed() from exc
            raise StaleState() from exc
        self.kicker.kick(events)

    def entries(self, client_id: str) -> list[Entry]:
        stream = self._client(client_id).collection("ledger_entries").order_by("seq").stream()
        return [Entry.model_validate(snap.to_dict()) for snap in stream]

    def state(self, client_id: str) -> LedgerState:
        snap = self._state_ref(client_id).get()
        return LedgerState.model_validate(snap.to_dict()) if snap.exists else LedgerState(client_id=client_id)

    def entries_after(self, client_id: str, seq: int) -> list[Entry]:
        from google.cloud.firestore import FieldFilter

        query = self._client(client_id).collection("ledger_entries").where(filter=FieldFilter("seq", ">", seq))
        return [Entry.model_validate(snap.to_dict()) for snap in query.order_by("seq").stream()]

    def _checkpoint_ref(self, client_id: str) -> Any:
        # Not in the ``ledger`` collection: the scheduled jobs list that collection group's state documents.
        return self._client(client_id).collection("ledger_checkpoints").document("verify")

    def verify_checkpoint(self, client_id: str) -> Checkpoint | None:
        snap = self._checkpoint_ref(client_id).get()
        if not snap.exists:
            return None
        try:
            return Checkpoint.model_validate(snap.to_dict())
        except ValidationError:
            return None  # unreadable: verify from the first entry again, which writes a good one

    def save_verify_checkpoint(self, client_id: str, checkpoint: Checkpoint) -> None:
        from google.cloud.firestore import SERVER_TIMESTAMP

        # A plain set: any checkpoint is exact for its seq, so two runs racing can only cost progress.
        self._checkpoint_ref(client_id).set({**checkpoint.model_dump(), "verified_at": SERVER_TIMESTAMP})


class FirestoreLedgerReader(LedgerReader):
    """Reads ``clients/{c}`` and its ``ledger_entries``, and the ``ledger`` collection group."""

    def __init__(self, db: Client) -> None:
        self.db = db

    def _entries(self, client_id: str) -> Any:
        return self.db.collection("clients").document(client_id).collection("ledger_entries")

    def history(
        self, client_id: str, where: EntryFilter, *, after: tuple[datetime, int] | None = None, limit: int | None = None
    ) -> Iterator[Entry]:
        from google.cloud.firestore import FieldFilter, Query

        q = self._entries(client_id)
        if where.type:
            q = q.where(filter=FieldFilter("type", "==", where.type.value))
        if where.operation:
            q = q.where(filter=FieldFilter("operation", "==", where.operation))
        if where.since:
            q = q.where(filter=FieldFilter("created_at", ">=", where.since))
        if where.until:
            q = q.where(filter=FieldFilter("created_at", "<", where.until))
        q = q.order_by("created_at", direction=Query.DESCENDING).order_by("seq", direction=Query.DESCENDING)
        if after is not None:
            q = q.start_after({"created_at": after[0], "seq": after[1]})
        if limit is not None:
            q = q.limit(limit)
        for snapshot in q.stream():
            yield Entry.model_validate(snapshot.to_dict())

    def entries_between(self, client_id: str, type: EntryType, since: datetime, until: datetime) -> Iterator[Entry]:
        from google.cloud.firestore import FieldFilter

        q = (
            self._entries(client_id)
            .where(filter=FieldFilter("type", "==", type.value))
            .where(filter=FieldFilter("created_at", ">=", since))
            .where(filter=FieldFilter("created_at", "<", until))
        )
        for snapshot in q.stream():
            yield Entry.model_validate(snapshot.to_dict())

    def client_record(self, client_id: str) -> dict[str, Any] | None:
        snapshot = self.db.collection("clients").document(client_id).get()
        return (snapshot.to_dict() or {}) if snapshot.exists else None

    def client_records(self, *, prefix: str = "", after: str | None = None, limit: int) -> list[dict[str, Any]]:
        q = self.db.collection("clients").order_by("id")
        if after:
            q = q.start_after({"id": after})
        elif prefix:
            q = q.start_at({"id": prefix})
        if prefix:
            q = q.end_at({"id": prefix + "\uf8ff"})
        return [s.to_dict() or {} for s in q.limit(limit).stream()]

    def ledger_clients(self, due: DueField | None = None, now: datetime | None = None) -> list[str]:
        from google.cloud.firestore import FieldFilter
        from google.cloud.firestore_v1.field_path import FieldPath

        query = self.db.collection_group("ledger")
        if due is not None:
            query = query.where(filter=FieldFilter(due, "<=", now))
        found = []
        # By name only: reading a state document is each client's own step in the jobs, where a corrupt
        # one fails only that client.
        for snapshot in query.select([FieldPath.document_id()]).stream():
            client = snapshot.reference.parent.parent  # clients/{id}/ledger/state → clients/{id}
            if snapshot.id == "state" and client is not None:
                found.append(client.id)
        return found


OVERRIDE_DOC = ("settings", "prices")


class FirestorePriceOverrides(PriceOverrides):
    """The admin's price override, the top-level document ``settings/prices``."""

    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self) -> Any:
        return self.db.collection(OVERRIDE_DOC[0]).document(OVERRIDE_DOC[1])

    def load(self) -> PriceList | None:
        snapshot = self._ref().get()
        return PriceList.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def save(self, prices: PriceList) -> None:
        self._ref().set(prices.model_dump(mode="python"))
