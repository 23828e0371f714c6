"""The ledger's store on Firestore: ``clients/{c}/ledger/state``, ``ledger_entries/{seq}``,
``ledger_keys/{sha256}``, ``ledger_holds/{id}``, ``notifications/{…}``, ``ledger_checkpoints/verify``
(the port and its rules are :mod:`shared.ledger.store`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.ledger.model import Checkpoint, Entry, HoldOutcome, HoldStatus, LedgerState, Mutation
from shared.ledger.store import HoldRecord, KeyAlreadyUsed, LedgerStore, Marker, Snapshot, StaleState, key_hash

if TYPE_CHECKING:
    from google.cloud.firestore import Client


class FirestoreLedgerStore(LedgerStore):
    """``clients/{c}/ledger/state``, ``ledger_entries/{seq}``, ``ledger_keys/{sha256}``,
    ``ledger_holds/{id}``, ``notifications/{…}``, ``ledger_checkpoints/verify``."""

    def __init__(self, db: Client) -> None:
        self.db = db

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
        for index, note in enumerate(mutation.notifications):
            doc_id = f"credits-{note.kind}-{mutation.entries[-1].seq if mutation.entries else 0}-{index}"
            batch.create(
                client.collection("notifications").document(doc_id), {**note.model_dump(mode="python"), "read": False}
            )
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
