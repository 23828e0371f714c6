"""Firestore adapter of :class:`shared.billing.deadletters.DeadLetters`: ``stripe_dead_letters/{id}``.

The document id is the letter's derived id (``dl_`` + a hash), never the event's own id. Listing orders
by ``first_seen_at`` then ``id``, both descending (a composite index in production, as for job lists).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.billing.deadletters import DeadLetter, DeadLetterNotFound, DeadLetters
from shared.pagination import cursor_datetime, cursor_str, decode_cursor, encode_cursor
from shared.retry import CONTENDED_COMMIT, attempts

if TYPE_CHECKING:
    from google.cloud.firestore import Client

COLLECTION = "stripe_dead_letters"


class FirestoreDeadLetters(DeadLetters):
    def __init__(self, db: Client) -> None:
        self.db = db

    def _ref(self, letter_id: str) -> Any:
        return self.db.collection(COLLECTION).document(letter_id)

    def quarantine(self, letter: DeadLetter) -> DeadLetter:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import firestore

        ref = self._ref(letter.id)
        try:
            ref.create(letter.model_dump(mode="python"))
            return letter
        except AlreadyExists:
            # The same poison event again (Stripe's redelivery, a resend from the dashboard): one letter.
            ref.update(
                {"deliveries": firestore.Increment(1), "last_seen_at": letter.last_seen_at, "reason": letter.reason}
            )
        return self._stored(letter.id)

    def _stored(self, letter_id: str) -> DeadLetter:
        found = self.get(letter_id)
        if found is None:
            raise DeadLetterNotFound(f"No dead letter {letter_id}")
        return found

    def get(self, letter_id: str) -> DeadLetter | None:
        snapshot = self._ref(letter_id).get()
        return DeadLetter.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def page(self, limit: int, cursor: str | None) -> tuple[list[DeadLetter], str | None]:
        from google.cloud.firestore import Query

        query = (
            self.db.collection(COLLECTION)
            .order_by("first_seen_at", direction=Query.DESCENDING)
            .order_by("id", direction=Query.DESCENDING)
        )
        if cursor:
            values = decode_cursor(cursor)
            query = query.start_after({"first_seen_at": cursor_datetime(values, "t"), "id": cursor_str(values, "id")})
        letters = [DeadLetter.model_validate(s.to_dict()) for s in query.limit(limit + 1).stream()]
        if len(letters) <= limit:
            return letters, None
        letters = letters[:limit]
        return letters, encode_cursor({"t": letters[-1].first_seen_at.isoformat(), "id": letters[-1].id})

    def _update_guarded(self, letter_id: str, change: Any) -> DeadLetter:
        """Apply ``change(letter)`` (a dict of fields, or None for no write) on the stored letter,
        guarded by its update time: two concurrent replays cannot both write their outcome."""
        from google.api_core.exceptions import FailedPrecondition

        for _ in attempts(CONTENDED_COMMIT, "dead letter"):
            snapshot = self._ref(letter_id).get()
            if not snapshot.exists:
                raise DeadLetterNotFound(f"No dead letter {letter_id}")
            letter = DeadLetter.model_validate(snapshot.to_dict())
            fields = change(letter)
            if not fields:
                return letter
            try:
                self._ref(letter_id).update(fields, option=self.db.write_option(last_update_time=snapshot.update_time))
            except FailedPrecondition:
                continue
            return letter.model_copy(update=fields)
        from shared.errors import UpstreamUnavailable

        raise UpstreamUnavailable("The dead letter kept changing; try again", retry_after=1)

    def mark_replayed(self, letter_id: str, outcome: str, now: datetime) -> DeadLetter:
        def change(letter: DeadLetter) -> dict[str, Any] | None:
            if letter.status == "replayed":
                return None
            return {
                "status": "replayed",
                "replayed_at": now,
                "replay_outcome": outcome,
                "last_replay_at": now,
                "replay_attempts": letter.replay_attempts + 1,
            }

        return self._update_guarded(letter_id, change)

    def note_replay_failed(self, letter_id: str, reason: str, now: datetime) -> DeadLetter:
        def change(letter: DeadLetter) -> dict[str, Any] | None:
            if letter.status == "replayed":
                return None
            return {"last_replay_error": reason, "last_replay_at": now, "replay_attempts": letter.replay_attempts + 1}

        return self._update_guarded(letter_id, change)
