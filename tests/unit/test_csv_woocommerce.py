"""WooCommerce product exports: variations folded into their parent (by SKU or ``id:N``), never products
of their own; grouped and external products counted; the preview says how rows became products; HTML
descriptions kept for the store and turned into plain text for prompts."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from shared.catalog.csv_parsing import auto_map, build_preview, fold_rows, parse_csv, row_to_draft
from shared.catalog.models import ProductCreate
from shared.catalog.products import build_product
from shared.generation.models import GenerationSettings
from shared.generation.prompts import build_prompt
from shared.text import plain_text

# The columns of WooCommerce core's exporter (the ones the sample products use).
HEADER = [
    "ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog", "Short description",
    "Description", "Sale price", "Regular price", "Categories", "Tags", "Images", "Parent", "Grouped products",
    "External URL", "Button text", "Position", "Attribute 1 name", "Attribute 1 value(s)",
]  # fmt: skip
IMG = "https://woo.example/wp-content/uploads"
VNECK = "<p>Pellentesque habitant morbi tristique senectus et netus et malesuada fames.</p>"
HOODIE = "<p>Pellentesque habitant morbi <strong>tristique</strong> &amp; senectus.</p>\n<ul><li>Cotton</li></ul>"


def _row(ident: int, kind: str, sku: str, name: str, **cells: str) -> list[str]:
    values = dict.fromkeys(HEADER, "")
    values.update(ID=str(ident), Type=kind, SKU=sku, Name=name, Published="1")
    values.update({key.replace("_", " "): value for key, value in cells.items()})
    return [values[column] for column in HEADER]


def woo_sample() -> bytes:
    """Rows like WooCommerce core's sample export: two variable products with their variations (one
    by SKU, one by ``id:N``, one listed before its parent), simple, grouped and external products and
    a variation whose parent is not in the file."""
    rows = [
        _row(39, "variation", "woo-cap-black", "Cap - Black", Regular_price="18", Parent="id:44",
             Images=f"{IMG}/cap-black.jpg"),
        _row(10, "variable", "woo-vneck-tee", "V-Neck T-Shirt", Description=VNECK, Categories="Clothing > Tshirts",
             Images=f"{IMG}/vneck-tee-2.jpg, {IMG}/vnech-tee-green-1.jpg"),
        _row(11, "variable", "woo-hoodie", "Hoodie", Description=HOODIE, Categories="Clothing > Hoodies",
             Images=f"{IMG}/hoodie-2.jpg"),
        _row(12, "variation", "woo-vneck-tee-red", "V-Neck T-Shirt - Red", Regular_price="20", Parent="woo-vneck-tee",
             Images=f"{IMG}/vneck-tee-2.jpg"),
        _row(13, "variation", "woo-vneck-tee-green", "V-Neck T-Shirt - Green", Regular_price="20",
             Parent="woo-vneck-tee", Images=f"{IMG}/vnech-tee-green-1.jpg"),
        _row(14, "variation", "woo-vneck-tee-blue", "V-Neck T-Shirt - Blue", Regular_price="15",
             Parent="woo-vneck-tee", Images=f"{IMG}/vnech-tee-blue-1.jpg"),
        _row(15, "variation", "woo-hoodie-red", "Hoodie - Red, No", Regular_price="45", Sale_price="42",
             Parent="woo-hoodie", Images=f"{IMG}/hoodie-2.jpg"),
        _row(16, "variation", "woo-hoodie-green", "Hoodie - Green, No", Regular_price="45", Parent="woo-hoodie",
             Images=f"{IMG}/hoodie-green-1.jpg"),
        _row(17, "variation", "", "Hoodie - Blue, Yes", Regular_price="45", Parent="id:11",
             Images=f"{IMG}/hoodie-with-logo-2.jpg"),
        _row(18, "simple", "woo-beanie", "Beanie", Regular_price="20", Sale_price="18", Categories="Accessories",
             Images=f"{IMG}/beanie-2.jpg"),
        _row(19, "grouped", "logo-collection", "Logo Collection", Grouped_products="woo-hoodie, woo-beanie",
             Images=f"{IMG}/logo-1.jpg"),
        _row(20, "external", "wp-pennant", "WordPress Pennant", Regular_price="11.05",
             External_URL="https://mercantile.wordpress.org/product/wordpress-pennant/",
             Button_text="Buy on the WordPress swag store!",
             Images=f"{IMG}/pennant-1.jpg"),
        _row(21, "variation", "woo-polo-red", "Polo - Red", Regular_price="20", Parent="woo-polo"),
        _row(44, "variable", "", "Cap", Categories="Accessories", Images=f"{IMG}/cap-2.jpg"),
    ]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def test_variations_fold_into_their_parent_and_never_become_products() -> None:
    parsed = parse_csv(woo_sample())
    mapping = auto_map(parsed.headers)
    assert (mapping.name, mapping.sku, mapping.price, mapping.description) == (
        "Name",
        "SKU",
        "Regular price",
        "Description",
    )
    assert mapping.image_urls == ("Images",) and mapping.category == "Categories"
    rows, summary = fold_rows(parsed, mapping)
    drafts = {}
    for row in rows:
        result = row_to_draft(row, mapping)
        if result.draft is not None:
            drafts[result.draft.name] = result.draft
    assert set(drafts) == {"V-Neck T-Shirt", "Hoodie", "Beanie", "Logo Collection", "WordPress Pennant", "Cap"}
    assert not any(" - " in name for name in drafts)  # "Hoodie - Red, No" is no product
    vneck = drafts["V-Neck T-Shirt"]
    assert vneck.image_urls == (
        f"{IMG}/vneck-tee-2.jpg",
        f"{IMG}/vnech-tee-green-1.jpg",
        f"{IMG}/vnech-tee-blue-1.jpg",
    )  # the variations' images added, each once
    assert str(vneck.price) == "15.00"  # no price of its own: its lowest variation's
    hoodie = drafts["Hoodie"]
    assert hoodie.image_urls == (f"{IMG}/hoodie-2.jpg", f"{IMG}/hoodie-green-1.jpg", f"{IMG}/hoodie-with-logo-2.jpg")
    assert hoodie.description == HOODIE  # the store's HTML, kept for the store
    assert drafts["Cap"].image_urls == (f"{IMG}/cap-2.jpg", f"{IMG}/cap-black.jpg")  # parent by id:44, listed later
    assert str(drafts["Cap"].price) == "18.00"
    assert str(drafts["Beanie"].price) == "20.00"
    assert summary.model_dump() == {
        "source": "woocommerce",
        "rows": 14,
        "products": 6,
        "variations_folded": 7,
        "orphan_variations": 1,
        "grouped": 1,
        "external": 1,
    }
    orphan = next(row for row in rows if row.refusal is not None)
    assert orphan.number == 14
    result = row_to_draft(orphan, mapping)
    assert result.draft is None and [p.code for p in result.problems] == ["orphan_variation"]
    assert "'woo-polo'" in result.problems[0].message


def test_the_preview_says_how_rows_became_products() -> None:
    parsed = parse_csv(woo_sample())
    preview = build_preview(parsed, auto_map(parsed.headers))
    assert (preview.total_rows, preview.importable_rows) == (7, 6)
    assert preview.folding is not None and preview.folding.variations_folded == 7
    assert preview.notes[0] == (
        "WooCommerce export: 14 rows become 6 products; 7 variations were folded into their product (images added "
        "to it); 1 variations name a parent that is not in the file and are skipped; 1 grouped and 1 external "
        "products are imported as products of their own."
    )
    orphans = next(w for w in preview.warnings if w.problem_code == "orphan_variation")
    assert (orphans.row_numbers, orphans.severity) == ((14,), "error")
    assert orphans.message == "1 row with a variation whose parent product is not in the file is skipped."


def test_a_plain_csv_and_a_shopify_export_keep_their_behaviour() -> None:
    plain = parse_csv(b"Name,Type,SKU\nMug,simple,M-1\nCup,variation,C-1\n")  # no Parent column: no Woo export
    rows, summary = fold_rows(plain, auto_map(plain.headers))
    assert rows == plain.rows and summary.source is None and summary.sentence() is None
    preview = build_preview(plain, auto_map(plain.headers))
    assert preview.folding is None and preview.notes == ()
    shopify = parse_csv(b"Handle,Title,Image Src\nmug,Mug,https://x.example/1.jpg\nmug,,https://x.example/2.jpg\n")
    rows, summary = fold_rows(shopify, auto_map(shopify.headers))
    assert len(rows) == 1 and (summary.source, summary.rows, summary.products, summary.variations_folded) == (
        "shopify",
        2,
        1,
        1,
    )


def test_prompts_get_plain_text_from_html_descriptions() -> None:
    assert plain_text(HOODIE) == "Pellentesque habitant morbi tristique & senectus. Cotton"
    assert plain_text("<div><p>Soft</p><p>Warm</p></div><script>alert(1)</script>") == "Soft; Warm"
    assert plain_text("Fish &amp; chips &lt;3") == "Fish & chips <3"
    assert plain_text("No   markup\nhere, 5 < 6") == "No markup here, 5 < 6"
    product = build_product(
        "client", ProductCreate(name="Hoodie", description=HOODIE), datetime(2026, 1, 1, tzinfo=UTC)
    )
    prompt = build_prompt(GenerationSettings(), product, None)
    assert "Product details: Pellentesque habitant morbi tristique & senectus. Cotton" in prompt
    assert "<" not in prompt and "&amp;" not in prompt
    assert product.description == HOODIE
