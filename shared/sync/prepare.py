"""The file a store fetches: the asset's revision as the store can take it, under a clean SEO name.

Both platforms take JPEG, PNG, WebP and GIF. Shopify silently drops images over about 20 megapixels,
so larger ones are scaled down first (and the sync record says so). The copy lives at a key whose
basename is the file name the store keeps (``{product}-{style}-{mark}.{ext}``): WooCommerce needs a
real image extension there, and the ``mark`` finds a push whose answer was lost in the gallery.
"""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass

from shared.catalog.models import AssetDoc, AssetRevision, ProductDoc
from shared.imaging import ImageLimits, decode_image, inspect_image
from shared.storage import ObjectStore
from shared.sync.models import push_stem

STORE_MAX_PIXELS = 20_000_000  # Shopify drops larger images without an error
STORE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
NAME_WORDS = 8  # words of the product name kept in the file name
# The copies stores fetch: a key prefix of their own so one R2 lifecycle rule (infra/terraform/r2.tf) deletes
# them; the retention outlives the longest presigned URL (SYNC_SOURCE_URL_HOURS is at most 168 h).
SYNC_COPY_PREFIX = "sync-copies/"
SYNC_COPY_RETENTION_DAYS = 8


@dataclass(frozen=True)
class PushCopy:
    key: str
    name: str  # the file name the store keeps
    alt: str
    converted: str | None  # what was changed for the store, for the sync record


def slug(text: str, words: int = NAME_WORDS) -> str:
    """Lower-case ASCII words joined by hyphens ("Blue Mug — 12oz" → "blue-mug-12oz")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    parts = re.findall(r"[a-z0-9]+", ascii_text.lower())
    return "-".join(parts[:words])


def style_of(revision: AssetRevision, asset: AssetDoc) -> str | None:
    style = revision.metadata.get("style") or asset.metadata.get("style")
    return str(style) if style else None


def alt_text(product: ProductDoc, style: str | None) -> str:
    """The product's name and the image's style ("Blue mug, lifestyle photo"), at most 512 characters."""
    name = " ".join(product.name.split())
    text = f"{name}, {style.replace('_', ' ')} photo" if style else f"{name} product photo"
    return text[:512]


def push_copy(
    store: ObjectStore, asset: AssetDoc, revision: AssetRevision, product: ProductDoc, limits: ImageLimits
) -> PushCopy:
    """Write (once) the file the store will fetch and say what was converted."""
    style = style_of(revision, asset)
    data = store.get(revision.key, max_bytes=limits.max_bytes)
    info = inspect_image(data, limits)
    width, height = info.upright_size
    ext = STORE_TYPES.get(info.content_type)
    notes: list[str] = []
    too_big = width * height > STORE_MAX_PIXELS
    if ext is None:
        notes.append(
            f"converted from {info.format.lower()} to png"
            if info.has_alpha
            else f"converted from {info.format.lower()} to jpeg"
        )
    if too_big:
        notes.append(f"scaled down from {width}x{height} (over {STORE_MAX_PIXELS // 1_000_000} MP)")
    if ext is None or too_big:
        data, ext, size = _convert(data, limits, keep_alpha=info.has_alpha, fmt=ext)
        if too_big:
            notes[-1] += f" to {size[0]}x{size[1]}"
    stem = push_stem(asset.id, revision.number)
    base = slug(product.name) or "product"
    if style:
        base += "-" + slug(style, 3)
    name = f"{base}-{stem}.{ext}"
    key = push_copy_key(asset.client_id, asset.id, revision.number, name)
    # Written on every push, never reused: the R2 lifecycle rule on SYNC_COPY_PREFIX counts a copy's age
    # from its last write, so a copy is always younger than the presigned URL handed to the store.
    store.put(key, data, _content_type(ext), cache_control="private, max-age=86400")
    return PushCopy(key=key, name=name, alt=alt_text(product, style), converted="; ".join(notes) or None)


def push_copy_key(client_id: str, asset_id: str, revision: int, name: str) -> str:
    """Where the copy a store fetches lives: under ``SYNC_COPY_PREFIX``, which an R2 lifecycle rule
    empties after ``SYNC_COPY_RETENTION_DAYS`` (R2 rules match key prefixes only, so the retention class is
    the first segment of the key)."""
    return f"{SYNC_COPY_PREFIX}{client_id}/{asset_id}/r{revision}/{name}"


def _content_type(ext: str) -> str:
    return {v: k for k, v in STORE_TYPES.items()}[ext]


def _convert(
    data: bytes, limits: ImageLimits, *, keep_alpha: bool, fmt: str | None
) -> tuple[bytes, str, tuple[int, int]]:
    """Re-encode within the store's pixel limit, in its own format when the store takes it (else PNG
    when it has transparency, JPEG otherwise)."""
    import math

    from PIL import Image

    decoded = decode_image(data, limits)
    image = decoded.image
    pixels = image.width * image.height
    if pixels > STORE_MAX_PIXELS:
        factor = math.sqrt(STORE_MAX_PIXELS / pixels)
        size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    ext = fmt or ("png" if keep_alpha else "jpg")
    out = io.BytesIO()
    if ext == "jpg":
        image.convert("RGB").save(out, "JPEG", quality=92, optimize=True)
    elif ext == "png":
        image.save(out, "PNG", optimize=True)
    elif ext == "webp":
        image.save(out, "WEBP", quality=92)
    else:  # gif: the store takes it, but a scaled one is better as PNG
        ext = "png"
        image.save(out, "PNG", optimize=True)
    return out.getvalue(), ext, image.size
