"""The stack's platform, as integration tests change it behind the APIs' backs: another engine, object
store, clock or settings for one test; a Gemini engine pointed at the local stub; credits granted and
read straight from the ledger; Idempotency-Key records aged past their TTL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

GEMINI_STUB_KEY = "stub-key"
GEMINI_IMAGE_MODEL = "gemini-3.1-flash-image"


def install(
    stack: Any,
    *,
    engine: Any = None,
    video_engine: Any = None,
    speech_engine: Any = None,
    object_store: Any = None,
    clock: Callable[[], datetime] | None = None,
    ledger_on_clock: bool = False,
    **settings: Any,
) -> Any:
    """A platform like the stack's (same Firestore, dispatcher, fetcher and ledger), with other settings
    and/or another engine (image, video or speech), object store or clock. ``ledger_on_clock`` gives the
    platform its own ledger (same Firestore data) on ``clock``, so holds and their sweeper see that time
    too. The stack fixture resets the platform afterwards."""
    from shared.platform import Platform, set_platform

    p = stack.platform
    extra: dict[str, Any] = {}
    if engine is not None:
        extra["engine"] = engine
    if video_engine is not None:
        extra["video_engine"] = video_engine
    if speech_engine is not None:
        extra["speech_engine"] = speech_engine
    if clock is not None:
        extra["clock"] = clock
    if clock is None or not ledger_on_clock:
        extra["ledger"] = p.ledger
    platform = Platform(
        p.settings.model_copy(update=settings) if settings else p.settings,
        db=p.db,
        object_store=object_store or p.object_store,
        task_queue=stack.dispatcher,
        fetcher=p.fetcher,
        **extra,
    )
    set_platform(platform)
    return platform


def gemini_engine(stub: Any) -> Any:
    """A :class:`GeminiEngine` on the real ``google-genai`` SDK, talking to a running :class:`GeminiStub`."""
    from shared.engines.gemini import GeminiConfig, GeminiEngine

    return GeminiEngine(
        GeminiConfig(api_key=GEMINI_STUB_KEY, base_url=stub.url, api_version="v1beta", image_model=GEMINI_IMAGE_MODEL)
    )


def grant(stack: Any, client_id: str, amount: int) -> None:
    """Give the client ``amount`` credits (a pack grant by an admin), straight through the ledger."""
    from shared.ledger.model import Actor, GrantSource

    stack.platform.ledger.grant(
        client_id,
        key=f"grant-{client_id}-{amount}",
        amount=amount,
        source=GrantSource.PACK,
        actor=Actor(kind="admin", id="tester"),
        reason="test credits",
    )


def available(stack: Any, client_id: str) -> tuple[int, int]:
    """The client's (available, reserved) credits, as the ledger holds them."""
    state = stack.platform.ledger.state(client_id)
    return state.available, state.reserved


def expire_idempotency_records(stack: Any, client_id: str) -> None:
    """Age the HTTP layer's Idempotency-Key records past their TTL (what 24 h of waiting would do)."""
    records = stack.platform.db.collection("clients").document(client_id).collection("idempotency_keys")
    for snapshot in records.stream():
        snapshot.reference.update({"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
