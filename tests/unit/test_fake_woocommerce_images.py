"""FakeWooCommerce's galleries behave as the adapter against the stub does (see
tests/integration/test_woocommerce_adapter.py), so services' unit tests can rely on them."""

from __future__ import annotations

import pytest

from shared.stores.ports import StoreImageRejected, StoreProductGone, WooImageRef, WooKeys
from tests.fakes_stores import FakeWooCommerce, catalog

STORE = "https://woo.store.test"
KEYS = WooKeys(consumer_key="ck_x", consumer_secret="cs_x")


def test_the_gallery_is_replaced_keeping_by_id_and_adding_by_src() -> None:
    woo = FakeWooCommerce(products=catalog(1, images=2))
    product = woo.product(STORE, KEYS, "1000")
    assert [i.media_id for i in product.images] == ["100000", "100001"]

    gallery = woo.set_product_images(
        STORE,
        KEYS,
        "1000",
        [WooImageRef(src="https://r2.test/ai/front.png?sig=1", alt="Front"), WooImageRef(id="100001")],
    )

    new = gallery[0]
    assert new.media_id not in ("100000", "100001") and (new.position, new.alt) == (0, "Front")
    assert [(i.media_id, i.position) for i in gallery[1:]] == [("100001", 1)]
    assert woo.product(STORE, KEYS, "1000").images == gallery
    assert "100000" in woo.media  # removed from the product, still in the library
    assert woo.set_product_images(STORE, KEYS, "1000", [WooImageRef(id="100000")])[0].media_id == "100000"
    assert [call[0] for call in woo.image_writes] == ["1000", "1000"]
    assert woo.product_reads == ["1000", "1000"]


@pytest.mark.parametrize(
    "ref",
    [
        WooImageRef(src="https://r2.test/ai/front?sig=1"),
        WooImageRef(src="https://r2.test/ai/front.txt"),
        WooImageRef(src="https://r2.test/unfetchable.png"),
        WooImageRef(id="424242"),
    ],
)
def test_a_refused_image_changes_nothing(ref: WooImageRef) -> None:
    woo = FakeWooCommerce(products=catalog(1, images=2), unfetchable={"https://r2.test/unfetchable.png"})
    before = woo.product(STORE, KEYS, "1000")
    with pytest.raises(StoreImageRejected):
        woo.set_product_images(STORE, KEYS, "1000", [WooImageRef(id="100000"), ref])
    assert woo.product(STORE, KEYS, "1000") == before


def test_a_missing_or_trashed_product_is_gone() -> None:
    woo = FakeWooCommerce(products=catalog(2), trashed={"1001"})
    for product_id in ("1001", "999"):
        with pytest.raises(StoreProductGone):
            woo.product(STORE, KEYS, product_id)
        with pytest.raises(StoreProductGone):
            woo.set_product_images(STORE, KEYS, product_id, [WooImageRef(id="100100")])
