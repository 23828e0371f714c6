"""The rows of an export: what a finished job made (and what it failed to), or a selection of assets.

A job's rows follow its items in order: a generation item's images (its current revisions), an edit
item's asset at the revision the job made, a video item's deliverables; an item that failed or was
cancelled is a row with its reason and no file. An asset deleted since is a ``deleted`` row. Assets
and products are read in batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.batch.models import ItemListQuery, ItemStatus, JobStatus
from shared.catalog.models import AssetDoc, AssetKind, ProductDoc
from shared.errors import Conflict, NotFound
from shared.exports.layout import Row

if TYPE_CHECKING:
    from shared.batch.store import JobStore
    from shared.catalog.ports import CatalogRepositories

READ_BATCH = 300  # ids per batched read
_KIND_STYLES = {
    AssetKind.PRODUCT_IMAGE: "original",
    AssetKind.GENERATED: "generated",
    AssetKind.EDITED: "edited",
    AssetKind.VIDEO: "video",
}
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED})


class JobStillRunning(Conflict):
    code = "job_still_running"
    title = "The job has not finished"


@dataclass(frozen=True)
class Wanted:
    """A row before its asset is read: which asset (and revision number, None: its current one)."""

    status: str
    asset_id: str | None = None
    revision: int | None = None
    product_id: str | None = None
    style: str = "image"
    reason: str | None = None


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), READ_BATCH):
        yield ids[start : start + READ_BATCH]


def _reason(failure: Mapping[str, Any] | None, fallback: str) -> str:
    if not failure:
        return fallback
    code, message = failure.get("code"), failure.get("message")
    return f"{code}: {message}" if code and message else str(message or code or fallback)


def check_job(jobs: JobStore[Any, Any], client_id: str, job_id: str) -> Any:
    """The client's finished job (404 for another client's or a missing one, 409 while it runs)."""
    job = jobs.get_job(client_id, job_id)
    if job.status not in FINISHED:
        raise JobStillRunning(f"Job {job_id} is {job.status.value}; export it once it has finished", job_id=job_id)
    return job


def _items(jobs: JobStore[Any, Any], client_id: str, job_id: str) -> Iterator[Any]:
    cursor: str | None = None
    while True:
        page = jobs.list_items(client_id, job_id, ItemListQuery(limit=100, cursor=cursor))
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _not_made(item: Any, style: str, product_id: str | None, asset_id: str | None = None) -> Wanted | None:
    if item.status is ItemStatus.FAILED:
        return Wanted("failed", asset_id, None, product_id, style, _reason(item.failure, "failed"))
    if item.status is ItemStatus.CANCELLED:
        return Wanted("cancelled", asset_id, None, product_id, style, "the job was cancelled first")
    return None


def job_wanted(jobs: JobStore[Any, Any], client_id: str, job: Any) -> list[Wanted]:
    """What a finished job's rows are, by kind (generation, edit or video)."""
    from shared.editing.models import EditJobDoc
    from shared.generation.models import JobDoc
    from shared.videos.models import VideoJobDoc

    wanted: list[Wanted] = []
    for item in _items(jobs, client_id, job.id):
        if isinstance(job, JobDoc):
            style = job.settings.style
            wanted += [Wanted("ok", asset_id, None, item.product_id, style) for asset_id in item.asset_ids]
            failed = _not_made(item, style, item.product_id)
            if failed is not None:
                wanted.append(failed)
            elif item.failed_variants:  # some of its images were made, the others failed
                reason = _reason(item.failure, "failed") + f" ({item.failed_variants} of {job.settings.variants})"
                wanted.append(Wanted("failed", None, None, item.product_id, style, reason))
        elif isinstance(job, EditJobDoc):
            failed = _not_made(item, "edited", None, item.asset_id)
            wanted.append(failed or Wanted("ok", item.asset_id, item.revision, None, "edited"))
        elif isinstance(job, VideoJobDoc):
            wanted += _video_wanted(job, item)
    return wanted


def _video_wanted(job: Any, item: Any) -> list[Wanted]:
    from shared.videos.models import deliverable_asset_id

    if job.kind == "edit":
        failed = _not_made(item, "video-edit", None, item.asset_id)
        return [failed or Wanted("ok", item.asset_id, item.revision, None, "video-edit")]
    settings = job.settings
    style = settings.style if settings is not None else "video"
    aspects = {deliverable_asset_id(job, item, a): a for a in (settings.deliverables if settings else [])}
    made = [
        Wanted("ok", asset_id, None, item.product_id, f"{style}-{aspects.get(asset_id, '').replace(':', 'x')}")
        for asset_id in item.asset_ids
    ]
    failed = _not_made(item, style, item.product_id)
    return made + ([failed] if failed is not None else [])


def selection_wanted(catalog: CatalogRepositories, client_id: str, asset_ids: Sequence[str]) -> list[Wanted]:
    """A selection's rows: every asset must be the client's (404 naming the others, nothing written)."""
    found = read_assets(catalog, client_id, asset_ids)
    missing = [asset_id for asset_id in asset_ids if asset_id not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFound(f"No asset {missing[0]}{more}", missing=missing[:20])
    ordered = sorted(found.values(), key=lambda a: (a.product_id or "~", a.created_at, a.id))
    return [
        Wanted("ok", a.id, None, a.product_id, str(a.metadata.get("style") or _KIND_STYLES[a.kind])) for a in ordered
    ]


def read_assets(catalog: CatalogRepositories, client_id: str, asset_ids: Sequence[str]) -> dict[str, AssetDoc]:
    found: dict[str, AssetDoc] = {}
    for chunk in _chunks(list(dict.fromkeys(asset_ids))):
        found.update(catalog.assets.get_many(client_id, chunk))
    return found


def _products(catalog: CatalogRepositories, client_id: str, product_ids: Sequence[str]) -> dict[str, ProductDoc]:
    found: dict[str, ProductDoc] = {}
    for chunk in _chunks(list(dict.fromkeys(product_ids))):
        found.update(catalog.products.get_many(client_id, chunk))
    return found


def resolve(catalog: CatalogRepositories, client_id: str, wanted: Sequence[Wanted]) -> list[Row]:
    """The rows with their assets' objects and products' names read (in batches)."""
    assets = read_assets(catalog, client_id, [w.asset_id for w in wanted if w.asset_id and w.status == "ok"])
    product_ids: list[str] = []
    for w in wanted:
        found = assets.get(w.asset_id) if w.asset_id else None
        owner = found.product_id if found is not None else w.product_id
        if owner:
            product_ids.append(owner)
    products = _products(catalog, client_id, product_ids)
    rows: list[Row] = []
    for w in wanted:
        asset = assets.get(w.asset_id) if w.asset_id and w.status == "ok" else None
        product_id = asset.product_id if asset is not None else w.product_id
        product = products.get(product_id) if product_id else None
        base = Row(
            status=w.status,
            asset_id=w.asset_id,
            product_id=product_id,
            product=product.name if product else None,
            sku=product.sku if product else None,
            style=w.style,
            reason=w.reason,
        )
        if w.status != "ok":
            rows.append(base)
            continue
        key, content_type = (asset.key, asset.content_type) if asset is not None else (None, None)
        if asset is not None and w.revision is not None and w.revision != asset.current_revision:
            revision = catalog.assets.revision(client_id, asset.id, w.revision)
            key, content_type = (revision.key, revision.content_type) if revision else (None, None)
        if key is None:
            rows.append(base.model_copy(update={"status": "deleted", "reason": "the asset was deleted"}))
            continue
        rows.append(base.model_copy(update={"key": key, "content_type": content_type, "revision_key": key}))
    return rows
