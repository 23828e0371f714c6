"""One action on up to a thousand assets (``POST /assets/bulk``), with a result per id.

Each asset follows the rules of the single-asset routes: the flags and ``updated_at`` a PATCH sets
(an approval numbered and written with its event, :meth:`AssetRepository.update_many`), and the
delete of ``DELETE /assets/{id}`` (:func:`shared.catalog.library.delete_asset_documents`), its
objects deleted after the documents in batches. Flags and tags are read in batches and written in
guarded batches: an asset that changed between the read and the write is read and written again, up
to a few rounds, then answered ``conflict`` with nothing of it written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.catalog.library import delete_asset_documents
from shared.catalog.models import (
    MAX_ASSET_TAGS,
    AssetBulkOut,
    AssetBulkRequest,
    AssetDoc,
    BulkAction,
    BulkResult,
    BulkStatus,
)
from shared.errors import NotFound

if TYPE_CHECKING:
    from shared.catalog.ports import AssetRepository, Versioned
    from shared.storage import ObjectStore

# The flag each flag action sets, and to what.
FLAG_ACTIONS: dict[BulkAction, tuple[str, bool]] = {
    BulkAction.APPROVE: ("approved", True),
    BulkAction.UNAPPROVE: ("approved", False),
    BulkAction.FAVORITE: ("favorite", True),
    BulkAction.UNFAVORITE: ("favorite", False),
    BulkAction.PIN: ("pinned", True),
    BulkAction.UNPIN: ("pinned", False),
}
WRITE_ROUNDS = 3  # reads and guarded writes of an asset that keeps changing, before "conflict"
DELETE_PARALLEL = 8  # assets whose documents are deleted at once


def bulk_assets(
    assets: AssetRepository,
    store: ObjectStore,
    client_id: str,
    request: AssetBulkRequest,
    now: datetime,
    *,
    parallel: int = DELETE_PARALLEL,
) -> AssetBulkOut:
    """Apply ``request.action`` to every id; another client's id is ``not_found`` like a missing one."""
    if request.action is BulkAction.DELETE:
        results = _delete(assets, store, client_id, request.ids, parallel)
    else:
        results = _update(assets, client_id, request, now)
    ordered = [results[asset_id] for asset_id in request.ids]
    counts = Counter(result.status.value for result in ordered)
    return AssetBulkOut(action=request.action, results=ordered, counts=dict(sorted(counts.items())))


def _changes(request: AssetBulkRequest, asset: AssetDoc, now: datetime) -> dict[str, Any] | BulkResult | None:
    """What the action changes on ``asset`` (None: nothing to change; a result: refused)."""
    if request.action in FLAG_ACTIONS:
        flag, value = FLAG_ACTIONS[request.action]
        return None if getattr(asset, flag) is value else {flag: value, "updated_at": now}
    wanted = request.tags or []
    if request.action is BulkAction.TAG:
        tags = [*asset.tags, *(tag for tag in wanted if tag not in asset.tags)]
        if len(tags) > MAX_ASSET_TAGS:
            detail = f"the asset would have {len(tags)} tags; at most {MAX_ASSET_TAGS}"
            return BulkResult(id=asset.id, status=BulkStatus.REFUSED, detail=detail)
    else:
        tags = [tag for tag in asset.tags if tag not in wanted]
    return None if tags == asset.tags else {"tags": tags, "updated_at": now}


def _update(assets: AssetRepository, client_id: str, request: AssetBulkRequest, now: datetime) -> dict[str, BulkResult]:
    results: dict[str, BulkResult] = {}
    pending: Sequence[str] = request.ids
    for _round in range(WRITE_ROUNDS):
        loaded = assets.load_many(client_id, pending)
        writes: list[tuple[Versioned[AssetDoc], dict[str, Any]]] = []
        for asset_id in pending:
            found = loaded.get(asset_id)
            if found is None:
                results[asset_id] = BulkResult(id=asset_id, status=BulkStatus.NOT_FOUND)
                continue
            change = _changes(request, found.value, now)
            if isinstance(change, BulkResult):
                results[asset_id] = change
            elif change is None:
                results[asset_id] = BulkResult(id=asset_id, status=BulkStatus.OK)
            else:
                writes.append((found, change))
        moved = assets.update_many(client_id, writes) if writes else set()
        for found, _change in writes:
            if found.value.id not in moved:
                results[found.value.id] = BulkResult(id=found.value.id, status=BulkStatus.OK)
        pending = [asset_id for asset_id in pending if asset_id in moved]
        if not pending:
            break
    for asset_id in pending:
        detail = "the asset kept changing while it was written; nothing changed, try again"
        results[asset_id] = BulkResult(id=asset_id, status=BulkStatus.CONFLICT, detail=detail)
    return results


def _delete(
    assets: AssetRepository, store: ObjectStore, client_id: str, ids: Sequence[str], parallel: int
) -> dict[str, BulkResult]:
    def one(asset_id: str) -> tuple[BulkResult, set[str]]:
        try:
            keys = delete_asset_documents(assets, client_id, asset_id)
        except NotFound:
            return BulkResult(id=asset_id, status=BulkStatus.NOT_FOUND), set()
        return BulkResult(id=asset_id, status=BulkStatus.OK), keys

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        done = list(pool.map(one, ids))
    # Objects go after every reference to them: a failure here leaves garbage, never a dangling link.
    store.delete_many(sorted({key for _result, keys in done for key in keys}))
    return {result.id: result for result, _keys in done}
