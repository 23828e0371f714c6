"""The edit use cases against the in-memory fakes (no emulator, no network): what ``prepare`` refuses
and how it quotes, how a synchronous edit appends revisions (and survives a concurrent one), revert,
and how a paid edit job is accepted (one hold, the job with its items, one fan-out task; a keyed
retry reserves nothing more). The pixels themselves are tests/unit/test_editing_pipeline.py's."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from shared.batch.kind import RequestKey
from shared.batch.models import ItemStatus, JobTask
from shared.billing.service import PaymentPastDue
from shared.catalog import assets as catalog_assets
from shared.catalog import products
from shared.catalog.models import AssetDoc, AssetKind, AssetOrigin, AssetRevision, MediaKind, ProductCreate
from shared.config import Settings
from shared.editing.models import EditRequest
from shared.editing.service import (
    EDITS,
    AssetImageMissing,
    AssetNotAnImage,
    EditServices,
    Prepared,
    edit_policy,
    prepare,
    quote_edit,
    revert,
    run_sync,
)
from shared.editing.service import create_job as create_edit_job
from shared.engines.offline import OfflineEngine
from shared.errors import Conflict, IdempotencyKeyReused, InsufficientCredits, NotFound, ValidationFailed
from shared.imaging import ImageLimits
from shared.ledger.model import Actor, GrantSource
from shared.ledger.pricing import load_default_prices
from shared.ledger.service import Ledger
from tests import images
from tests.fakes import InMemoryLedgerStore, InMemoryObjectStore, RecordingTaskQueue
from tests.fakes_batch import InMemoryJobStore
from tests.fakes_billing import InMemoryBilling
from tests.fakes_catalog import InMemoryAssetRepository, InMemoryProductRepository, in_memory_catalog

CLIENT = "client_a"
OTHER = "client_b"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = edit_policy(Settings(epox_env="test"))
PRICES = load_default_prices()
EXPIRES = 600
SIZE = (40, 30)  # every test asset's revision 1


class RacingStore(InMemoryObjectStore):
    """Whenever an edit reads an asset's current pixels, ``rival`` (another writer) commits first."""

    def __init__(self) -> None:
        super().__init__()
        self.rival: Any = None
        self.rivals = 0

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        data = super().get(key, max_bytes=max_bytes)
        if self.rival is not None and "/assets/" in key:
            self.rivals += 1
            self.rival()
        return data


@dataclass
class World:
    """One tenant's catalog (and another's), the object store, and what edit jobs run with."""

    products: InMemoryProductRepository
    assets: InMemoryAssetRepository
    store: RacingStore = field(default_factory=RacingStore)
    product_ids: dict[str, str] = field(default_factory=dict)

    def asset(self, asset_id: str, client_id: str = CLIENT, size: tuple[int, int] = SIZE) -> AssetDoc:
        if client_id not in self.product_ids:
            self.products.billing[client_id] = {"plan": "starter", "product_slots": 10}
            product = products.create_product(self.products, client_id, ProductCreate(name="Vase"), NOW)
            self.product_ids[client_id] = product.id
        return catalog_assets.store_product_image(
            self.assets,
            self.store,
            client_id=client_id,
            product_id=self.product_ids[client_id],
            image_bytes=images.png(size),
            origin=catalog_assets.NewProductImage(asset_id=asset_id, origin=AssetOrigin.UPLOAD),
            limits=ImageLimits(),
            thumbnail_max_side=16,
            now=NOW,
        )

    def numbers(self, asset_id: str, client_id: str = CLIENT) -> list[int]:
        return [r.number for r in self.assets.revisions(client_id, asset_id)]

    def current(self, asset_id: str, client_id: str = CLIENT) -> AssetDoc:
        asset = self.assets.get(client_id, asset_id)
        assert asset is not None
        return asset

    def prepare(self, asset_ids: list[str], *operations: dict[str, Any], client_id: str = CLIENT) -> Prepared:
        return prepare(self.assets, PRICES, client_id, request(asset_ids, *operations), POLICY)

    def run(self, prepared: Prepared) -> Any:
        return run_sync(self.assets, self.store, prepared, client_id=CLIENT, policy=POLICY, now=NOW, expires_in=EXPIRES)


def world() -> World:
    repos = in_memory_catalog()
    assert isinstance(repos.products, InMemoryProductRepository)
    assert isinstance(repos.assets, InMemoryAssetRepository)
    return World(products=repos.products, assets=repos.assets)


def request(asset_ids: list[str], *operations: dict[str, Any]) -> EditRequest:
    return EditRequest.model_validate({"asset_ids": asset_ids, "operations": list(operations)})


def key_form(asset_id: str, number: int, ext: str = "png") -> str:
    return rf"^clients/{CLIENT}/assets/{asset_id}/r{number}-[0-9a-f]{{8}}\.{ext}$"


RESIZE_20 = {"op": "resize", "width": 20}
PROMPT = {"op": "prompt_edit", "prompt": "brighter"}


# -- prepare: refusals ------------------------------------------------------------------------------


def test_unknown_asset_ids_are_404_naming_the_first_missing() -> None:
    w = world()
    w.asset("ast_1")
    before = dict(w.store.objects)
    for call in (prepare, quote_edit):
        with pytest.raises(NotFound) as raised:
            call(w.assets, PRICES, CLIENT, request(["ast_1", "ast_x", "ast_y"], RESIZE_20), POLICY)
        assert raised.value.status == 404
        assert raised.value.detail == "No asset ast_x (and 1 more)"
    with pytest.raises(NotFound, match=r"^No asset ast_y$"):
        w.prepare(["ast_y"], RESIZE_20)
    assert w.store.objects == before and w.numbers("ast_1") == [1]


def test_another_clients_asset_is_not_found_for_edit_quote_and_revert() -> None:
    w = world()
    w.asset("ast_1", client_id=OTHER)
    w.asset("ast_mine")
    with pytest.raises(NotFound, match="ast_1"):
        w.prepare(["ast_mine", "ast_1"], RESIZE_20)
    with pytest.raises(NotFound):
        quote_edit(w.assets, PRICES, CLIENT, request(["ast_1"], PROMPT), POLICY)
    with pytest.raises(NotFound):
        revert(w.assets, w.store, client_id=CLIENT, asset_id="ast_1", number=1, now=NOW, expires_in=EXPIRES)
    assert w.numbers("ast_1", OTHER) == [1]
    # Its owner may edit it.
    assert w.prepare(["ast_1"], RESIZE_20, client_id=OTHER).mode == "sync"


def test_a_video_asset_is_refused_before_anything_is_read() -> None:
    w = world()
    w.asset("ast_1")
    video = w.current("ast_1").model_copy(
        update={"id": "vid_1", "kind": AssetKind.VIDEO, "media": MediaKind.VIDEO, "content_type": "video/mp4"}
    )
    first = AssetRevision(
        number=1,
        key=video.key,
        thumbnail_key=video.thumbnail_key,
        content_type="video/mp4",
        width=video.width,
        height=video.height,
        size_bytes=1,
        operation="original",
        created_at=NOW,
    )
    w.assets.create(video, first)
    with pytest.raises(AssetNotAnImage) as raised:
        w.prepare(["ast_1", "vid_1"], RESIZE_20)
    error = raised.value
    assert (error.status, error.code, error.extensions["asset_id"]) == (422, "asset_not_an_image", "vid_1")
    # An image asset whose stored type is not an image format is refused too.
    w.assets.update_flags(CLIENT, "ast_1", {"content_type": "application/pdf"})
    with pytest.raises(AssetNotAnImage):
        w.prepare(["ast_1"], RESIZE_20)


def test_more_assets_than_the_policy_allows_is_a_validation_error() -> None:
    w = world()
    for i in range(3):
        w.asset(f"ast_{i}")
    narrow = replace(POLICY, max_assets=2)
    with pytest.raises(ValidationFailed) as raised:
        prepare(w.assets, PRICES, CLIENT, request(["ast_0", "ast_1", "ast_2"], RESIZE_20), narrow)
    assert raised.value.status == 422
    assert [(e["field"], e["type"]) for e in raised.value.extensions["errors"]] == [("asset_ids", "too_long")]
    # The limit itself is allowed, and it is checked before any asset is looked up.
    assert prepare(w.assets, PRICES, CLIENT, request(["ast_0", "ast_1"], RESIZE_20), narrow).mode == "sync"
    with pytest.raises(ValidationFailed):
        prepare(w.assets, PRICES, CLIENT, request(["ast_x", "ast_y", "ast_z"], RESIZE_20), narrow)


def test_the_request_caps_assets_and_operations() -> None:
    ids = [f"ast_{i}" for i in range(POLICY.max_assets + 1)]
    with pytest.raises(pydantic.ValidationError) as too_many_assets:
        request(ids, RESIZE_20)
    assert [(e["loc"], e["type"]) for e in too_many_assets.value.errors()] == [(("asset_ids",), "too_long")]
    with pytest.raises(pydantic.ValidationError) as too_many_ops:
        request(["ast_1"], *[RESIZE_20] * 21)
    assert [(e["loc"], e["type"]) for e in too_many_ops.value.errors()] == [(("operations",), "too_long")]
    assert len(request(["ast_1"], *[RESIZE_20] * 20).operations) == 20
    assert len(request(ids[:-1], RESIZE_20).asset_ids) == POLICY.max_assets


# -- prepare: mode and quote ------------------------------------------------------------------------


def test_a_free_local_pipeline_on_few_assets_is_sync_and_free() -> None:
    w = world()
    w.asset("ast_1")
    w.asset("ast_2")
    before = dict(w.store.objects)
    prepared = w.prepare(
        ["ast_1", "ast_2"],
        {"op": "crop", "aspect": "1:1"},
        RESIZE_20,
        {"op": "pad", "aspect": "4:3", "color": "#FFFFFF"},
        {"op": "output", "format": "webp"},
    )
    assert prepared.mode == "sync"
    assert (prepared.quote.total, prepared.quote.lines) == (0, [])
    assert prepared.quote.price_list_version == PRICES.version
    # Planned on the recorded sizes: crop 1:1 of 40x30 is 30x30, resized to 20x20, padded to 4:3.
    assert [(f.width, f.height) for f in prepared.assets[0].frames][:3] == [(30, 30), (20, 20), (27, 20)]
    assert w.store.objects == before and w.numbers("ast_1") == [1]  # nothing read or written


def test_a_model_step_makes_a_job_whose_quote_is_the_price_list() -> None:
    w = world()
    w.asset("ast_1")
    w.asset("ast_2")
    ops = (RESIZE_20, PROMPT, {"op": "upscale", "size": "4K"})
    prepared = w.prepare(["ast_1", "ast_2"], *ops)
    assert prepared.mode == "job"
    per_asset = PRICES.price("prompt_edit", None) + PRICES.price("upscale", "4K")
    assert per_asset > 0 and prepared.quote.total == 2 * per_asset
    assert [(li.asset_id, li.operation_index, li.operation, li.variant, li.amount) for li in prepared.quote.lines] == [
        (asset_id, index, name, variant, PRICES.price(name, variant))
        for asset_id in ("ast_1", "ast_2")
        for index, name, variant in ((1, "prompt_edit", None), (2, "upscale", "4K"))
    ]
    assert [item.cost for item in prepared.assets] == [per_asset, per_asset]
    assert quote_edit(w.assets, PRICES, CLIENT, request(["ast_1", "ast_2"], *ops), POLICY) == prepared.quote


def test_a_scene_background_is_priced_as_a_generated_image_of_its_size_class() -> None:
    w = world()
    w.asset("ast_1")
    prepared = w.prepare(["ast_1"], {"op": "background", "type": "scene", "prompt": "a marble table"})
    assert prepared.mode == "job"
    [line] = prepared.quote.lines
    assert (line.operation, line.variant, line.amount) == ("generate_image", "1K", PRICES.price("generate_image", "1K"))


def test_a_free_pipeline_on_more_assets_than_the_sync_limit_is_a_free_job() -> None:
    w = world()
    ids = [f"ast_{i}" for i in range(POLICY.sync_max_assets + 1)]
    for asset_id in ids:
        w.asset(asset_id, size=(8, 6))
    assert w.prepare(ids[:-1], RESIZE_20).mode == "sync"  # the limit itself is still synchronous
    prepared = w.prepare(ids, RESIZE_20)
    assert (prepared.mode, prepared.quote.total) == ("job", 0)


# -- run_sync ---------------------------------------------------------------------------------------


def test_run_sync_appends_exactly_one_revision_per_asset_under_new_keys() -> None:
    w = world()
    originals = [w.asset("ast_1"), w.asset("ast_2")]
    before = dict(w.store.objects)
    prepared = w.prepare(["ast_1", "ast_2"], RESIZE_20)

    result = w.run(prepared)

    assert (result.status, result.charged) == ("completed", 0)
    assert [(r.asset_id, r.revision, r.width, r.height, r.operation) for r in result.revisions] == [
        ("ast_1", 2, 20, 15, "resize 20"),
        ("ast_2", 2, 20, 15, "resize 20"),
    ]
    new_keys = set()
    for original in originals:
        asset = w.current(original.id)
        assert w.numbers(original.id) == [1, 2] and asset.current_revision == 2
        assert re.match(key_form(original.id, 2), asset.key) and asset.thumbnail_key.endswith("_thumb.webp")
        assert asset.thumbnail_key.startswith(f"clients/{CLIENT}/assets/{original.id}/r2-")
        [first, second] = w.assets.revisions(CLIENT, original.id)
        assert (first.key, first.thumbnail_key) == (original.key, original.thumbnail_key)  # untouched
        assert (second.key, second.metadata["source_revision"]) == (asset.key, 1)
        new_keys |= {asset.key, asset.thumbnail_key}
    # Only the new revisions' objects were added; revision 1's bytes are as they were.
    assert set(w.store.objects) == set(before) | new_keys and len(new_keys) == 4
    assert all(w.store.objects[key] == value for key, value in before.items())
    assert images.decode(w.store.objects[w.current("ast_1").key][0]).size == (20, 15)
    # The product's image entry follows the asset to its new revision.
    product = w.products.get(CLIENT, w.product_ids[CLIENT])
    assert product is not None
    assert {i.asset_id: i.key for i in product.images} == {a: w.current(a).key for a in ("ast_1", "ast_2")}


def test_a_sync_refusal_on_any_asset_writes_nothing() -> None:
    w = world()
    w.asset("ast_1")
    broken = w.asset("ast_2")
    prepared = w.prepare(["ast_1", "ast_2"], RESIZE_20)
    w.store.delete(broken.key)
    before = dict(w.store.objects)
    with pytest.raises(AssetImageMissing) as raised:
        w.run(prepared)
    assert raised.value.extensions["asset_id"] == "ast_2"
    assert [w.numbers(a) for a in ("ast_1", "ast_2")] == [[1], [1]]  # ast_1 was computed, never committed
    assert w.store.objects == before


@pytest.mark.parametrize("when", ["after_prepare", "during_commit"])
def test_an_edit_that_lands_first_is_edited_on_top_of(when: str) -> None:
    w = world()
    w.asset("ast_1")
    theirs = w.prepare(["ast_1"], {"op": "crop", "box": {"x": 0, "y": 0, "width": 20, "height": 20}})
    ours = w.prepare(["ast_1"], {"op": "resize", "width": 10})
    landed: list[Any] = []
    if when == "after_prepare":
        landed.append(w.run(theirs))
    else:  # their commit lands between our read of the asset and our write
        w.assets.before_write.append(lambda: landed.append(w.run(theirs)))

    result = w.run(ours)

    [their_revision] = landed[0].revisions
    [mine] = result.revisions
    assert (their_revision.revision, mine.revision) == (2, 3)
    assert w.numbers("ast_1") == [1, 2, 3] and w.current("ast_1").current_revision == 3
    # Recomputed on their 20x20 crop, not on the 40x30 original it was prepared on (that gives 10x8).
    assert (mine.width, mine.height) == (10, 10) and mine.metadata["source_revision"] == 2
    second = w.assets.revision(CLIENT, "ast_1", 2)
    assert second is not None and second.operation == "crop 20x20"
    # Our lost try's revision-2 objects are gone; theirs are referenced and kept.
    r2 = {k for k in w.store.objects if k.startswith(f"clients/{CLIENT}/assets/ast_1/r2-")}
    assert r2 == {second.key, second.thumbnail_key}
    assert len(w.store.objects) == 6  # three revisions, a media object and a thumbnail each


def test_an_asset_that_keeps_changing_is_a_conflict_and_leaves_no_objects_behind() -> None:
    w = world()
    original = w.asset("ast_1")
    prepared = w.prepare(["ast_1"], RESIZE_20)
    # A revert to r1 (which writes no objects) lands every time our edit reads the asset's pixels.
    w.store.rival = lambda: catalog_assets.revert(w.assets, CLIENT, "ast_1", 1, NOW)

    with pytest.raises(Conflict) as raised:
        w.run(prepared)

    assert (raised.value.status, raised.value.extensions["asset_id"]) == (409, "ast_1")
    assert w.store.rivals >= 2  # recomputed on top at least once before giving up
    stored = w.assets.revisions(CLIENT, "ast_1")
    assert [r.operation for r in stored] == ["original"] + ["revert to r1"] * w.store.rivals
    assert set(w.store.objects) == {original.key, original.thumbnail_key}  # every try's objects discarded


# -- revert -----------------------------------------------------------------------------------------


def test_revert_appends_a_new_revision_pointing_at_the_old_keys() -> None:
    w = world()
    original = w.asset("ast_1")
    w.run(w.prepare(["ast_1"], RESIZE_20))
    edited = w.assets.revision(CLIENT, "ast_1", 2)
    assert edited is not None
    before = dict(w.store.objects)

    out = revert(w.assets, w.store, client_id=CLIENT, asset_id="ast_1", number=1, now=NOW, expires_in=EXPIRES)

    assert (out.asset_id, out.revision, out.operation) == ("ast_1", 3, "revert to r1")
    assert (out.width, out.height) == SIZE
    assert out.url == w.store.presigned_get(original.key, expires_in=EXPIRES)
    assert w.numbers("ast_1") == [1, 2, 3]
    third = w.assets.revision(CLIENT, "ast_1", 3)
    assert third is not None and (third.key, third.thumbnail_key) == (original.key, original.thumbnail_key)
    assert third.metadata["reverted_to"] == 1 and third.metadata["source_revision"] == 2
    assert w.assets.revision(CLIENT, "ast_1", 2) == edited  # history is append-only
    asset = w.current("ast_1")
    assert (asset.current_revision, asset.key, (asset.width, asset.height)) == (3, original.key, SIZE)
    assert w.store.objects == before  # nothing copied, nothing deleted


def test_reverting_to_a_missing_revision_is_not_found_and_appends_nothing() -> None:
    w = world()
    w.asset("ast_1")
    for number in (2, 9):
        with pytest.raises(NotFound) as raised:
            revert(w.assets, w.store, client_id=CLIENT, asset_id="ast_1", number=number, now=NOW, expires_in=EXPIRES)
        assert raised.value.status == 404 and f"no revision {number}" in raised.value.detail
    with pytest.raises(NotFound):
        revert(w.assets, w.store, client_id=CLIENT, asset_id="ast_gone", number=1, now=NOW, expires_in=EXPIRES)
    assert w.numbers("ast_1") == [1] and w.current("ast_1").current_revision == 1


# -- create_job -------------------------------------------------------------------------------------


@dataclass
class Jobs:
    """Edit jobs on the in-memory job store, a real ledger and a recording queue."""

    w: World
    credits: int = 20
    jobs: InMemoryJobStore[Any, Any] = field(default_factory=lambda: InMemoryJobStore(EDITS))
    queue: RecordingTaskQueue = field(default_factory=RecordingTaskQueue)
    ledger: Ledger = field(default_factory=lambda: Ledger(InMemoryLedgerStore(), clock=lambda: NOW))
    billing: InMemoryBilling = field(default_factory=InMemoryBilling)

    def __post_init__(self) -> None:
        if self.credits:
            self.ledger.grant(
                CLIENT,
                key="g",
                amount=self.credits,
                source=GrantSource.PACK,
                actor=Actor(kind="admin", id="t"),
                reason="t",
            )
        self.services = EditServices(
            jobs=self.jobs,
            store=self.w.store,
            queue=self.queue,
            ledger=self.ledger,
            policy=POLICY.batch,
            clock=lambda: NOW,
            edit=POLICY,
            assets=self.w.assets,
            engines=OfflineEngine,
            remover=self._no_remover,
        )

    @staticmethod
    def _no_remover() -> Any:
        raise AssertionError("accepting a job never loads rembg")

    def create(self, prepared: Prepared, request_key: RequestKey | None = None) -> Any:
        return create_edit_job(
            self.services, prepared, client_id=CLIENT, user_id="u1", request_key=request_key, billing=self.billing
        )

    def balance(self) -> tuple[int, int]:
        state = self.ledger.state(CLIENT)
        return state.available, state.reserved


def test_a_paid_edit_job_reserves_its_quote_as_one_hold_and_records_its_items() -> None:
    w = world()
    w.asset("ast_1")
    w.asset("ast_2")
    env = Jobs(w)
    prepared = w.prepare(["ast_1", "ast_2"], PROMPT, {"op": "upscale", "size": "2K"})
    total = prepared.quote.total
    assert total == 2 * (PRICES.price("prompt_edit", None) + PRICES.price("upscale", "2K"))
    objects = dict(w.store.objects)

    job = env.create(prepared)

    assert env.balance() == (env.credits - total, total)
    holds = env.ledger.state(CLIENT).holds
    assert list(holds) == [job.hold_id] and holds[job.hold_id].amount == total
    stored = env.jobs.get_job(CLIENT, job.id)
    assert stored.id.startswith("edj") and (stored.cost, stored.hold_id) == (total, job.hold_id)
    assert (stored.asset_ids, stored.item_count, stored.created_by) == (["ast_1", "ast_2"], 2, "u1")
    assert [op["op"] for op in stored.operations] == ["prompt_edit", "upscale"]
    assert stored.price_list_version == PRICES.version
    items = env.jobs.all_items(CLIENT, job.id)
    per_asset = {"prompt_edit": PRICES.price("prompt_edit", None), "upscale": PRICES.price("upscale", "2K")}
    assert [(i.index, i.asset_id, i.status, i.cost, i.costs) for i in items] == [
        (0, "ast_1", ItemStatus.QUEUED, total // 2, per_asset),
        (1, "ast_2", ItemStatus.QUEUED, total // 2, per_asset),
    ]
    [task] = env.queue.tasks
    assert (task.target, task.path) == ("edit_tasks", "/tasks/fanout")
    assert isinstance(task.payload, JobTask) and (task.payload.client_id, task.payload.job_id) == (CLIENT, job.id)
    # Accepting edits nothing yet and stores nothing (no mask in this pipeline).
    assert w.numbers("ast_1") == w.numbers("ast_2") == [1] and w.store.objects == objects


def test_the_same_request_key_returns_the_same_job_without_a_second_hold() -> None:
    w = world()
    w.asset("ast_1")
    env = Jobs(w)
    prepared = w.prepare(["ast_1"], PROMPT)
    key = RequestKey(key="edit-once-1", fingerprint="fp-1")

    first = env.create(prepared, key)
    again = env.create(w.prepare(["ast_1"], PROMPT), key)

    assert again.id == first.id and again.hold_id == first.hold_id
    assert env.balance() == (env.credits - 1, 1) and len(env.ledger.state(CLIENT).holds) == 1
    assert list(env.jobs.jobs) == [(CLIENT, first.id)] and len(env.queue.tasks) == 1
    # The same key with another request is a 409, and reserves nothing either.
    with pytest.raises(IdempotencyKeyReused):
        env.create(w.prepare(["ast_1"], {"op": "prompt_edit", "prompt": "darker"}), RequestKey("edit-once-1", "fp-2"))
    assert env.balance() == (env.credits - 1, 1) and len(env.jobs.jobs) == 1
    # Without a key, every request is a job of its own.
    other = env.create(prepared)
    assert other.id != first.id and env.balance() == (env.credits - 2, 2)


def test_a_free_job_reserves_nothing() -> None:
    w = world()
    ids = [f"ast_{i}" for i in range(POLICY.sync_max_assets + 1)]
    for asset_id in ids:
        w.asset(asset_id, size=(8, 6))
    env = Jobs(w, credits=0)
    job = env.create(w.prepare(ids, RESIZE_20))
    assert job.hold_id == "" and job.cost == 0
    assert env.ledger.state(CLIENT).holds == {} and env.balance() == (0, 0)
    assert len(env.jobs.all_items(CLIENT, job.id)) == len(ids) and len(env.queue.tasks) == 1


def test_an_unaffordable_or_blocked_paid_job_is_refused_and_writes_nothing() -> None:
    w = world()
    w.asset("ast_1")
    w.asset("ast_2")
    prepared = w.prepare(["ast_1", "ast_2"], PROMPT)

    poor = Jobs(w, credits=1)
    with pytest.raises(InsufficientCredits) as raised:
        poor.create(prepared)
    assert raised.value.status == 402
    assert poor.balance() == (1, 0) and poor.jobs.jobs == {} and poor.queue.tasks == []

    blocked = Jobs(w)
    blocked.billing.seed(CLIENT, plan="starter", subscription_status="unpaid")
    with pytest.raises(PaymentPastDue):
        blocked.create(prepared)
    assert blocked.balance() == (blocked.credits, 0) and blocked.jobs.jobs == {} and blocked.queue.tasks == []
