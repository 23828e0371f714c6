"""The in-memory Shopify fake's product images behave like the adapter over the stub: pushes append, reads
move processing on, reorders and removals follow Shopify's rules, and every call is recorded."""

from __future__ import annotations

import pytest

from shared.stores.ports import MediaState, StoreImageRejected, StoreProductGone, StoreUnavailable
from tests.fakes_stores import FakeShopifyAdmin, catalog

SHOP = "demo-shop.myshopify.com"


def test_a_push_is_appended_polled_to_ready_featured_and_removed() -> None:
    fake = FakeShopifyAdmin(products=catalog(2, images=2))
    pid = "1000"
    merchant = [i.media_id for i in fake.product_images(SHOP, "t", pid)]
    pushed = fake.add_product_image(SHOP, "t", pid, source_url="https://r2.test/a.png", alt="ours")
    assert pushed.state is MediaState.UPLOADED and fake.pushed == [(pid, "https://r2.test/a.png", "ours")]
    assert fake.media_states(SHOP, "t", [pushed.media_id])[pushed.media_id].state is MediaState.PROCESSING
    done = fake.media_states(SHOP, "t", [pushed.media_id, "unknown"])
    assert list(done) == [pushed.media_id] and done[pushed.media_id].state is MediaState.READY
    with pytest.raises(StoreImageRejected):
        fake.reorder_product_images(SHOP, "t", pid, [("unknown", 0)])
    fake.reorder_product_images(SHOP, "t", pid, [(pushed.media_id, 0)])
    assert [i.media_id for i in fake.product_images(SHOP, "t", pid)] == [pushed.media_id, *merchant]
    fake.remove_product_images(SHOP, "t", pid, [pushed.media_id, "unknown"])
    assert [i.media_id for i in fake.product_images(SHOP, "t", pid)] == merchant
    assert pushed.media_id in fake.media  # the file stays
    assert fake.removals == [(pid, [pushed.media_id, "unknown"])] and len(fake.reorders) == 1


def test_knobs_fail_drop_refuse_and_lose_the_product() -> None:
    fake = FakeShopifyAdmin(products=catalog(1), media_reads_until_ready=0, fail_media_with="IMAGE_DOWNLOAD_FAILURE")
    failed = fake.add_product_image(SHOP, "t", "1000", source_url="https://r2.test/a.png", alt="")
    with pytest.raises(StoreUnavailable):  # still UPLOADED: Shopify updates READY files only
        fake.remove_product_images(SHOP, "t", "1000", [failed.media_id])
    state = fake.media_states(SHOP, "t", [failed.media_id])[failed.media_id]
    assert (state.state, state.error_code) == (MediaState.FAILED, "IMAGE_DOWNLOAD_FAILURE")
    with pytest.raises(StoreImageRejected):
        fake.remove_product_images(SHOP, "t", "1000", [failed.media_id])
    fake.fail_media_with, fake.drop_next_media = None, True
    huge = fake.add_product_image(SHOP, "t", "1000", source_url="https://r2.test/huge.png", alt="")
    assert fake.media_states(SHOP, "t", [huge.media_id]) == {}
    fake.reject_images = "FILE_STORAGE_LIMIT_EXCEEDED"
    with pytest.raises(StoreImageRejected):
        fake.add_product_image(SHOP, "t", "1000", source_url="https://r2.test/b.png", alt="")
    fake.gone_products.add("1000")
    with pytest.raises(StoreProductGone):
        fake.product_images(SHOP, "t", "1000")
    fake.remove_product_images(SHOP, "t", "1000", [huge.media_id])  # nothing left to take off: done
    assert len(fake.pushed) == 2
