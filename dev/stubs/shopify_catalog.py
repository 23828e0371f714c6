"""The Shopify stub's shop data and its Admin GraphQL schema subset (``dev/stubs/shopify.py`` serves them).

A :class:`Catalog` holds products (with variants and image media) and collections, generated
deterministically by :func:`demo_catalog`. :func:`build_schema` is the graphql-core schema the stub runs
queries on; :func:`query_cost` and :func:`actual_cost` price a query the way Shopify's calculated query
cost describes it; :func:`bulk_rows` flattens a bulk query's result into the JSONL rows Shopify writes;
:func:`rest_product` is the REST-shaped product the product webhooks carry.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    get_named_type,
    value_from_ast_untyped,
)
from graphql import build_schema as _build_sdl

GID = "gid://shopify"
MAX_PAGE = 250  # Shopify's largest first/last on a connection


def gid(kind: str, number: int) -> str:
    return f"{GID}/{kind}/{number}"


def gid_number(value: str) -> int | None:
    match = re.fullmatch(r"gid://shopify/[A-Za-z]+/(\d+)", value)
    return int(match.group(1)) if match else None


@dataclass
class Variant:
    id: int
    title: str
    sku: str
    price: str  # Money: a decimal string, as Shopify serialises it
    position: int
    barcode: str | None = None


@dataclass
class Image:
    """A MediaImage; ``path`` is served by the stub itself (``/cdn/shop/files/…png``)."""

    id: int
    alt: str
    path: str
    width: int
    height: int
    color: tuple[int, int, int]
    status: str = "READY"
    errors: list[dict[str, str | None]] = field(default_factory=list)  # mediaErrors {code message details}
    mime: str = "image/png"


@dataclass
class Product:
    id: int
    title: str
    handle: str
    description_html: str
    product_type: str
    vendor: str
    tags: list[str]
    variants: list[Variant]
    media: list[Image]
    created_at: str
    updated_at: str
    status: str = "ACTIVE"

    @property
    def gid(self) -> str:
        return gid("Product", self.id)


@dataclass
class Collection:
    id: int
    title: str
    handle: str
    product_ids: list[int] = field(default_factory=list)

    @property
    def gid(self) -> str:
        return gid("Collection", self.id)


@dataclass
class Catalog:
    products: dict[int, Product] = field(default_factory=dict)  # insertion order is id order
    collections: dict[int, Collection] = field(default_factory=dict)
    files: dict[int, Image] = field(default_factory=dict)  # the shop's Files: every image, on a product or not
    next_id: int = 9_000_000_000
    observe: Callable[[Image, dict[str, Any]], None] | None = None  # told of each media read (the stub's processing)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def collections_of(self, product_id: int) -> list[Collection]:
        return [c for c in self.collections.values() if product_id in c.product_ids]

    def find_image(self, path: str) -> Image | None:
        for product in self.products.values():
            for image in product.media:
                if image.path == path:
                    return image
        return next((image for image in self.files.values() if image.path == path), None)

    def read(self, image: Image, info: Any) -> Image:
        """``image`` as a query reads it now (the stub moves a pushed image's processing on with each read)."""
        if self.observe is not None:
            self.observe(image, info.context)
        return image


_ADJECTIVES = [
    "Classic",
    "Organic",
    "Handmade",
    "Minimal",
    "Vintage",
    "Everyday",
    "Premium",
    "Coastal",
    "Alpine",
    "Urban",
]
_NOUNS = [
    ("Ceramic Mug", "Kitchen"),
    ("Linen Tote", "Bags"),
    ("Wool Beanie", "Apparel"),
    ("Leather Wallet", "Accessories"),
    ("Scented Candle", "Home"),
]
_VENDORS = ["Northwind Goods", "Maple & Co", "Studio Lume"]
_COLORS = [("Sand", (214, 196, 160)), ("Olive", (112, 128, 64)), ("Ink", (40, 52, 84)), ("Rust", (170, 84, 50))]
_SIZES = ["S", "M", "L"]
_COLLECTIONS = [("Best Sellers", "best-sellers"), ("Gift Ideas", "gift-ideas"), ("New Arrivals", "new-arrivals")]


def demo_catalog(count: int = 50, image_size: int = 256) -> Catalog:
    """``count`` products, the same every time: 1-3 variants with SKUs, 1-3 images, three collections."""
    catalog = Catalog()
    for c, (title, handle) in enumerate(_COLLECTIONS):
        catalog.collections[500_000 + c] = Collection(500_000 + c, title, handle)
    for i in range(count):
        adjective = _ADJECTIVES[i % len(_ADJECTIVES)]
        noun, product_type = _NOUNS[(i // len(_ADJECTIVES)) % len(_NOUNS)]
        title = f"{adjective} {noun}" + (f" {i // 50 + 1}" if i >= 50 else "")
        handle = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        product_id = 7_000_000_000 + i
        variants = [
            Variant(
                id=40_000_000_000 + i * 10 + v,
                title=_SIZES[v] if product_type == "Apparel" else _COLORS[(i + v) % len(_COLORS)][0],
                sku=f"EPX-{i:04d}-{v + 1}",
                price=f"{12 + (i % 7) * 4 + v * 2}.00",
                position=v + 1,
                barcode=f"0{700000000000 + i * 10 + v}",
            )
            for v in range(1 + i % 3)
        ]
        media = [
            Image(
                id=30_000_000_000 + i * 10 + m,
                alt=f"{title}, view {m + 1}",
                path=f"/cdn/shop/files/{handle}-{m + 1}.png",
                width=image_size,
                height=image_size,
                color=_COLORS[(i + m) % len(_COLORS)][1],
            )
            for m in range(1 + (i + 1) % 3)
        ]
        stamp = f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00Z"
        catalog.products[product_id] = Product(
            id=product_id,
            title=title,
            handle=handle,
            description_html=f"<p>The {title.lower()}: made by {_VENDORS[i % 3]}.</p><p>Item {i + 1}.</p>",
            product_type=product_type,
            vendor=_VENDORS[i % len(_VENDORS)],
            tags=sorted({adjective.lower(), product_type.lower(), "demo"}),
            variants=variants,
            media=media,
            created_at=stamp,
            updated_at=stamp,
        )
        catalog.files.update((image.id, image) for image in media)
        for c, collection in enumerate(catalog.collections.values()):
            if i % (c + 2) == 0:
                collection.product_ids.append(product_id)
    return catalog


def png(image: Image) -> bytes:
    """The image's PNG: a field of its colour with a darker square (small, valid, deterministic)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    picture = PILImage.new("RGB", (image.width, image.height), image.color)
    shade = tuple(max(0, channel - 60) for channel in image.color)
    inset = image.width // 4
    ImageDraw.Draw(picture).rectangle(
        (inset, inset, image.width - inset, image.height - inset), fill=(shade[0], shade[1], shade[2])
    )
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


# -- search syntax --------------------------------------------------------------------------------
_TERM = re.compile(r"""(-?)(?:(\w+):)?(?:"([^"]*)"|'([^']*)'|(\S+))""")


def matches(product: Product, query: str | None, catalog: Catalog | None = None) -> bool:
    """Shopify's search syntax, the subset the stub knows: ``field:value`` terms ANDed (``title``,
    ``handle``, ``product_type``, ``vendor``, ``tag``, ``sku``, ``id``, ``status``, ``collection_id`` (given the
    ``catalog``; the filter exists since 2024-10), ``updated_at``/``created_at``
    with ``>``, ``>=``, ``<``, ``<=``), a leading ``-`` negates, bare words match the title, vendor, type, tags
    or SKUs; ``AND`` is ignored, ``OR`` and grouping are not supported. Unknown fields match everything (Shopify
    ignores them with a search warning)."""
    if not query:
        return True
    for negate, name, double, single, bare in _TERM.findall(query):
        value = double or single or bare
        if not name and value in ("AND", "OR"):
            continue
        hit = _term(product, name.lower(), value, catalog)
        if hit == bool(negate):
            return False
    return True


def _term(product: Product, name: str, value: str, catalog: Catalog | None = None) -> bool:
    lowered = value.lower()
    if name == "collection_id" and catalog is not None:
        return any(str(c.id) == value for c in catalog.collections_of(product.id))
    if name in ("", "title"):
        haystack = [product.title] if name else [product.title, product.vendor, product.product_type, *product.tags]
        haystack += [] if name else [v.sku for v in product.variants]
        return any(lowered in text.lower() for text in haystack)
    if name == "handle":
        return product.handle == value
    if name == "product_type":
        return product.product_type.lower() == lowered
    if name == "vendor":
        return product.vendor.lower() == lowered
    if name == "tag":
        return lowered in (t.lower() for t in product.tags)
    if name == "sku":
        return any(v.sku.lower() == lowered for v in product.variants)
    if name == "id":
        return str(product.id) == value
    if name == "status":
        return product.status.lower() == lowered
    if name in ("updated_at", "created_at"):
        stamp = product.updated_at if name == "updated_at" else product.created_at
        match = re.fullmatch(r"(>=|<=|>|<)?(.+)", value)
        assert match is not None
        op, bound = match.group(1) or "=", match.group(2).strip("'\"")
        ops: dict[str, Callable[[str, str], bool]] = {
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            "=": lambda a, b: a.startswith(b),
        }
        return ops[op](stamp, bound)
    return True


# -- the GraphQL schema ---------------------------------------------------------------------------
SDL = """
scalar URL
scalar DateTime
scalar HTML
scalar Money
scalar UnsignedInt64

interface Node { id: ID! }
interface Media {
  id: ID! alt: String mediaContentType: MediaContentType! status: MediaStatus! preview: MediaPreviewImage
  mediaErrors: [MediaError!]!
}
interface File { id: ID! alt: String fileStatus: FileStatus! }

enum MediaContentType { IMAGE VIDEO EXTERNAL_VIDEO MODEL_3D }
enum MediaStatus { UPLOADED PROCESSING READY FAILED }
enum FileStatus { UPLOADED PROCESSING READY FAILED }
enum MediaErrorCode {
  UNKNOWN INVALID_SIGNED_URL IMAGE_DOWNLOAD_FAILURE IMAGE_PROCESSING_FAILURE MEDIA_TIMEOUT_ERROR
  FILE_STORAGE_LIMIT_EXCEEDED INVALID_IMAGE_FILE_SIZE INVALID_IMAGE_RESOLUTION INVALID_IMAGE_ASPECT_RATIO
  UNSUPPORTED_IMAGE_FILE_TYPE DUPLICATE_FILENAME_ERROR
}
enum MediaUserErrorCode {
  INVALID BLANK PRODUCT_DOES_NOT_EXIST MEDIA_DOES_NOT_EXIST MEDIA_DOES_NOT_EXIST_ON_PRODUCT NON_READY_MEDIA
  PRODUCT_MEDIA_LIMIT_EXCEEDED SHOP_MEDIA_LIMIT_EXCEEDED
}
enum FilesErrorCode {
  FILE_DOES_NOT_EXIST FILE_LOCKED INVALID INVALID_FAILED_MEDIA_STATE NON_READY_STATE MISSING_ARGUMENTS
  REFERENCE_TARGET_DOES_NOT_EXIST UNSUPPORTED_FILE_REFERENCE TOO_MANY_ARGUMENTS
}
enum ProductStatus { ACTIVE ARCHIVED DRAFT }
enum BulkOperationStatus { CREATED RUNNING COMPLETED CANCELING CANCELED FAILED EXPIRED }
enum BulkOperationErrorCode { ACCESS_DENIED INTERNAL_SERVER_ERROR TIMEOUT }
enum BulkOperationType { QUERY MUTATION }
enum BulkOperationUserErrorCode { INVALID OPERATION_IN_PROGRESS }

type PageInfo { hasNextPage: Boolean! hasPreviousPage: Boolean! startCursor: String endCursor: String }
type Count { count: Int! precision: String! }

type Image { id: ID url: URL! altText: String width: Int height: Int }
type MediaPreviewImage { image: Image status: MediaStatus! }
type MediaError { code: MediaErrorCode! details: String message: String! }
type MediaImage implements Media & Node & File {
  id: ID! alt: String mediaContentType: MediaContentType! status: MediaStatus! preview: MediaPreviewImage
  mediaErrors: [MediaError!]! fileStatus: FileStatus! image: Image mimeType: String
}

type SelectedOption { name: String! value: String! }
type ProductVariant implements Node {
  id: ID! title: String! sku: String price: Money! position: Int! barcode: String product: Product!
  selectedOptions: [SelectedOption!]!
}

type Product implements Node {
  id: ID! title: String! handle: String! descriptionHtml: HTML! description: String! productType: String!
  vendor: String! tags: [String!]! status: ProductStatus! createdAt: DateTime! updatedAt: DateTime!
  variants(first: Int, after: String, last: Int, before: String): ProductVariantConnection!
  media(first: Int, after: String, last: Int, before: String): MediaConnection!
  collections(first: Int, after: String, last: Int, before: String): CollectionConnection!
  featuredMedia: Media
  variantsCount: Count
  mediaCount: Count
}

type Collection implements Node {
  id: ID! title: String! handle: String!
  products(first: Int, after: String, last: Int, before: String): ProductConnection!
  productsCount: Count
}

type ProductEdge { cursor: String! node: Product! }
type ProductConnection { edges: [ProductEdge!]! nodes: [Product!]! pageInfo: PageInfo! }
type ProductVariantEdge { cursor: String! node: ProductVariant! }
type ProductVariantConnection { edges: [ProductVariantEdge!]! nodes: [ProductVariant!]! pageInfo: PageInfo! }
type MediaEdge { cursor: String! node: Media! }
type MediaConnection { edges: [MediaEdge!]! nodes: [Media!]! pageInfo: PageInfo! }
type CollectionEdge { cursor: String! node: Collection! }
type CollectionConnection { edges: [CollectionEdge!]! nodes: [Collection!]! pageInfo: PageInfo! }

type BulkOperation implements Node {
  id: ID! status: BulkOperationStatus! errorCode: BulkOperationErrorCode createdAt: DateTime! completedAt: DateTime
  objectCount: UnsignedInt64! rootObjectCount: UnsignedInt64! fileSize: UnsignedInt64 url: URL partialDataUrl: URL
  query: String! type: BulkOperationType!
}
type BulkOperationUserError { field: [String!] message: String! code: BulkOperationUserErrorCode }
type BulkOperationRunQueryPayload { bulkOperation: BulkOperation userErrors: [BulkOperationUserError!]! }

type Shop { id: ID! name: String! myshopifyDomain: String! }

type QueryRoot {
  shop: Shop!
  products(first: Int, after: String, last: Int, before: String, query: String, reverse: Boolean): ProductConnection!
  product(id: ID!): Product
  productsCount(query: String): Count
  collections(first: Int, after: String, last: Int, before: String, query: String): CollectionConnection!
  collection(id: ID!): Collection
  node(id: ID!): Node
  nodes(ids: [ID!]!): [Node]!
  currentBulkOperation(type: BulkOperationType = QUERY): BulkOperation
  bulkOperation(id: ID!): BulkOperation
}

type App { id: ID! title: String! }
enum AppUninstallAppUninstallErrorCode { APP_NOT_INSTALLED }
type AppUninstallAppUninstallError { field: [String!] message: String! code: AppUninstallAppUninstallErrorCode }
type AppUninstallPayload { app: App userErrors: [AppUninstallAppUninstallError!]! }

type UserError { field: [String!] message: String! }
type MediaUserError { code: MediaUserErrorCode field: [String!] message: String! }
type FilesUserError { code: FilesErrorCode field: [String!] message: String! }
type Job { id: ID! done: Boolean! }

input ProductUpdateInput {
  id: ID title: String descriptionHtml: String productType: String vendor: String tags: [String!] status: ProductStatus
}
input CreateMediaInput { originalSource: String! mediaContentType: MediaContentType! alt: String }
type ProductUpdatePayload { product: Product userErrors: [UserError!]! }

input MoveInput { id: ID! newPosition: UnsignedInt64! }
type ProductReorderMediaPayload { job: Job mediaUserErrors: [MediaUserError!]! userErrors: [UserError!]! }

input FileUpdateInput {
  id: ID! alt: String filename: String originalSource: String previewImageSource: String
  referencesToAdd: [ID!] referencesToRemove: [ID!]
}
type FileUpdatePayload { files: [File!] userErrors: [FilesUserError!]! }

type Mutation {
  bulkOperationRunQuery(query: String!, groupObjects: Boolean! = false): BulkOperationRunQueryPayload
  appUninstall: AppUninstallPayload
  productUpdate(product: ProductUpdateInput, media: [CreateMediaInput!]): ProductUpdatePayload
  productReorderMedia(id: ID!, moves: [MoveInput!]!): ProductReorderMediaPayload
  fileUpdate(files: [FileUpdateInput!]!): FileUpdatePayload
}

schema { query: QueryRoot mutation: Mutation }
"""


def build_schema() -> GraphQLSchema:
    """The schema; ``UnsignedInt64`` inputs must be strings of digits, as Shopify insists (an integer is
    refused with "UnsignedInt64 '1' must be encoded as a string")."""
    schema = _build_sdl(SDL)
    unsigned = schema.type_map["UnsignedInt64"]
    assert isinstance(unsigned, GraphQLScalarType)
    # graphql-core 3.3 coerces with coerce_input_value / coerce_input_literal (parse_* kept for older ones)
    unsigned.parse_value = unsigned.coerce_input_value = _unsigned  # type: ignore[method-assign]
    unsigned.parse_literal = lambda node, variables=None: _unsigned(  # type: ignore[method-assign]
        value_from_ast_untyped(node, variables)
    )
    unsigned.coerce_input_literal = lambda node: _unsigned(value_from_ast_untyped(node))
    return schema


def _unsigned(value: Any) -> str:
    if not isinstance(value, str):
        raise GraphQLError(f"UnsignedInt64 '{value}' must be encoded as a string")
    if not value.isdigit():
        raise GraphQLError(f"UnsignedInt64 '{value}' is not a valid unsigned integer")
    return value


def cursor(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"last_id": position}).encode()).decode().rstrip("=")


def _position(value: str) -> int:
    try:
        padded = value + "=" * (-len(value) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["last_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {value}") from exc


def connection(items: list[Any], args: dict[str, Any], *, bulk: bool, name: str) -> dict[str, Any]:
    """A Relay connection over ``items`` (each a dict with ``_pos``); a bulk query reads everything."""
    first, last = args.get("first"), args.get("last")
    if bulk:
        window = items
        has_next = has_previous = False
    else:
        if first is None and last is None:
            raise GraphQLError("you must provide one of first or last", extensions={"code": "BAD_REQUEST"})
        for value in (first, last):
            if value is not None and not 0 <= value <= MAX_PAGE:
                raise GraphQLError(
                    f"The connection {name} cannot return more than {MAX_PAGE} records: first/last is {value}",
                    extensions={"code": "BAD_REQUEST"},
                )
        after = _position(args["after"]) if args.get("after") is not None else None
        before = _position(args["before"]) if args.get("before") is not None else None
        window = [i for i in items if (after is None or i["_pos"] > after) and (before is None or i["_pos"] < before)]
        has_next = before is not None and any(i["_pos"] >= before for i in items)
        has_previous = after is not None and any(i["_pos"] <= after for i in items)
        if first is not None:
            has_next = has_next or len(window) > first
            window = window[:first]
        if last is not None:
            has_previous = has_previous or len(window) > last
            window = window[len(window) - last :] if last else []
    edges = [{"cursor": cursor(item["_pos"]), "node": item} for item in window]
    return {
        "edges": edges,
        "nodes": list(window),
        "pageInfo": {
            "hasNextPage": has_next,
            "hasPreviousPage": has_previous,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


# -- calculated query cost ------------------------------------------------------------------------
MUTATION_COST = 10


@dataclass(frozen=True)
class _Walk:
    schema: GraphQLSchema
    fragments: dict[str, FragmentDefinitionNode]
    variables: dict[str, Any]


def _fields(
    walk: _Walk, selection_set: SelectionSetNode | None, parent: GraphQLObjectType | GraphQLInterfaceType
) -> Iterator[tuple[FieldNode, GraphQLObjectType | GraphQLInterfaceType]]:
    """Every field of a selection with the type it is selected on (fragments flattened)."""
    if selection_set is None:
        return
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            yield selection, parent
        elif isinstance(selection, InlineFragmentNode):
            on = walk.schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
            if isinstance(on, GraphQLObjectType | GraphQLInterfaceType):
                yield from _fields(walk, selection.selection_set, on)
        elif isinstance(selection, FragmentSpreadNode):
            fragment = walk.fragments.get(selection.name.value)
            on = walk.schema.get_type(fragment.type_condition.name.value) if fragment else None
            if fragment is not None and isinstance(on, GraphQLObjectType | GraphQLInterfaceType):
                yield from _fields(walk, fragment.selection_set, on)


def _arg(walk: _Walk, node: FieldNode, name: str) -> Any:
    for argument in node.arguments or ():
        if argument.name.value == name:
            value: ValueNode = argument.value
            return value_from_ast_untyped(value, walk.variables)
    return None


def _child(
    walk: _Walk, node: FieldNode, parent: GraphQLObjectType | GraphQLInterfaceType
) -> GraphQLObjectType | GraphQLInterfaceType | None:
    definition = parent.fields.get(node.name.value)
    if definition is None:
        return None
    named = get_named_type(definition.type)
    return named if isinstance(named, GraphQLObjectType | GraphQLInterfaceType) else None


def is_connection(kind: GraphQLObjectType | GraphQLInterfaceType | None) -> bool:
    return kind is not None and kind.name.endswith("Connection")


def _node_selections(
    walk: _Walk, node: FieldNode, kind: GraphQLObjectType | GraphQLInterfaceType
) -> list[tuple[SelectionSetNode | None, GraphQLObjectType | GraphQLInterfaceType, str, str | None]]:
    """The node selections under a connection field: (selection, node type, list key, edge key)."""
    found: list[tuple[SelectionSetNode | None, GraphQLObjectType | GraphQLInterfaceType, str, str | None]] = []
    for sub, on in _fields(walk, node.selection_set, kind):
        sub_kind = _child(walk, sub, on)
        key = sub.alias.value if sub.alias else sub.name.value
        if sub.name.value == "nodes" and sub_kind is not None:
            found.append((sub.selection_set, sub_kind, key, None))
        elif sub.name.value == "edges" and sub_kind is not None:
            for edge_field, edge_on in _fields(walk, sub.selection_set, sub_kind):
                node_kind = _child(walk, edge_field, edge_on)
                if edge_field.name.value == "node" and node_kind is not None:
                    edge_key = edge_field.alias.value if edge_field.alias else "node"
                    found.append((edge_field.selection_set, node_kind, key, edge_key))
    return found


def _estimate(
    walk: _Walk, selection_set: SelectionSetNode | None, parent: GraphQLObjectType | GraphQLInterfaceType
) -> int:
    total = 0
    for node, on in _fields(walk, selection_set, parent):
        kind = _child(walk, node, on)
        if kind is None or node.name.value.startswith("__"):
            continue  # scalars and enums cost nothing
        if is_connection(kind):
            size = _arg(walk, node, "first") or _arg(walk, node, "last") or 0
            per_node = sum(
                1 + _estimate(walk, sel, node_kind) for sel, node_kind, _, _ in _node_selections(walk, node, kind)
            )
            total += 2 + int(size) * per_node
        else:
            total += 1 + _estimate(walk, node.selection_set, kind)
    return total


def _actual(
    walk: _Walk, selection_set: SelectionSetNode | None, parent: GraphQLObjectType | GraphQLInterfaceType, data: Any
) -> int:
    if not isinstance(data, dict):
        return 0
    total = 0
    for node, on in _fields(walk, selection_set, parent):
        kind = _child(walk, node, on)
        key = node.alias.value if node.alias else node.name.value
        value = data.get(key)
        if kind is None or value is None or node.name.value.startswith("__"):
            continue
        if is_connection(kind):
            total += 2
            for sel, node_kind, list_key, edge_key in _node_selections(walk, node, kind):
                for row in value.get(list_key) or []:
                    item = row.get(edge_key) if edge_key else row
                    total += 1 + _actual(walk, sel, node_kind, item)
        elif isinstance(value, list):
            total += sum(1 + _actual(walk, node.selection_set, kind, item) for item in value)
        else:
            total += 1 + _actual(walk, node.selection_set, kind, value)
    return total


def _walk_of(
    schema: GraphQLSchema, document: Any, operation: OperationDefinitionNode, variables: dict[str, Any]
) -> _Walk:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    return _Walk(schema, fragments, variables)


def query_cost(
    schema: GraphQLSchema, document: Any, operation: OperationDefinitionNode, variables: dict[str, Any]
) -> int:
    """The requested cost: scalars and enums 0, an object 1, a connection 2 + ``first``/``last`` x (1 + the
    cost of its node's selection), each mutation field 10 (Shopify's calculated query cost, simplified)."""
    walk = _walk_of(schema, document, operation, variables)
    if operation.operation.value == "mutation":
        return MUTATION_COST * len(operation.selection_set.selections)
    root = schema.query_type
    assert root is not None
    return _estimate(walk, operation.selection_set, root)


def actual_cost(
    schema: GraphQLSchema, document: Any, operation: OperationDefinitionNode, variables: dict[str, Any], data: Any
) -> int:
    """The same rule over what was returned: a connection counts the nodes it gave, not ``first``."""
    walk = _walk_of(schema, document, operation, variables)
    if operation.operation.value == "mutation":
        return MUTATION_COST * len(operation.selection_set.selections)
    root = schema.query_type
    assert root is not None
    return _actual(walk, operation.selection_set, root, data)


# -- bulk operations ------------------------------------------------------------------------------
def bulk_shape_errors(schema: GraphQLSchema, document: Any, operation: OperationDefinitionNode) -> list[str]:
    """What Shopify refuses in a bulk query: no connection, more than five, nesting deeper than two levels,
    a nested connection whose parent does not select ``id``."""
    walk = _walk_of(schema, document, operation, {})
    problems: list[str] = []
    count = 0

    def visit(
        selection_set: SelectionSetNode | None, parent: GraphQLObjectType | GraphQLInterfaceType, depth: int
    ) -> None:
        nonlocal count
        for node, on in _fields(walk, selection_set, parent):
            kind = _child(walk, node, on)
            if kind is None:
                continue
            if is_connection(kind):
                count += 1
                if depth >= 2:
                    problems.append("Bulk queries cannot contain connections with a nesting depth greater than 2.")
                for sel, node_kind, _, _ in _node_selections(walk, node, kind):
                    nested = [n for n, o in _fields(walk, sel, node_kind) if is_connection(_child(walk, n, o))]
                    has_id = any(n.name.value == "id" and not n.alias for n, _ in _fields(walk, sel, node_kind))
                    if nested and not has_id:
                        problems.append(
                            f"The parent '{node.name.value}' field for a nested connection must select the 'id' field."
                        )
                    visit(sel, node_kind, depth + 1)
            else:
                visit(node.selection_set, kind, depth)

    root = schema.query_type
    assert root is not None
    visit(operation.selection_set, root, 0)
    if count == 0:
        problems.append("Bulk queries must contain at least one connection.")
    if count > 5:
        problems.append("Bulk queries cannot contain more than 5 connections.")
    return problems


def bulk_rows(
    schema: GraphQLSchema, document: Any, operation: OperationDefinitionNode, data: Any, *, grouped: bool
) -> list[dict[str, Any]]:
    """The JSONL rows of a bulk query's result: each connection node is a row without its nested
    connections, which become rows of their own with ``__parentId``. ``grouped``: children right below their
    parent; otherwise (``groupObjects: false``, the default since 2026-01) every child after its parent but
    not next to it — the stub writes all rows of one depth before the next."""
    walk = _walk_of(schema, document, operation, {})
    rows: list[tuple[int, dict[str, Any]]] = []

    def strip(
        selection_set: SelectionSetNode | None,
        parent: GraphQLObjectType | GraphQLInterfaceType,
        value: dict[str, Any],
        depth: int,
    ) -> dict[str, Any]:
        """``value`` without its connections; connection nodes are emitted as rows as they are met."""
        out = dict(value)
        pending: list[tuple[SelectionSetNode | None, GraphQLObjectType | GraphQLInterfaceType, dict[str, Any]]] = []
        for node, on in _fields(walk, selection_set, parent):
            kind = _child(walk, node, on)
            key = node.alias.value if node.alias else node.name.value
            if kind is None or key not in value or value[key] is None:
                continue
            if is_connection(kind):
                out.pop(key, None)
                for sel, node_kind, list_key, edge_key in _node_selections(walk, node, kind):
                    for row in value[key].get(list_key) or []:
                        pending.append((sel, node_kind, row.get(edge_key) if edge_key else row))
            elif isinstance(value[key], dict):
                inner = strip(node.selection_set, kind, value[key], depth)
                pending.extend(inner.pop("__pending"))  # a connection inside a plain object is still a child
                out[key] = inner
        return out | {"__pending": pending}

    def emit(
        selection_set: SelectionSetNode | None,
        kind: GraphQLObjectType | GraphQLInterfaceType,
        item: dict[str, Any],
        depth: int,
        parent_id: str | None,
    ) -> None:
        stripped = strip(selection_set, kind, item, depth)
        pending = stripped.pop("__pending")
        if parent_id is not None:
            stripped["__parentId"] = parent_id
        rows.append((depth, stripped))
        seen: set[str] = set()
        for sel, node_kind, child in pending:
            key = str(child.get("id", id(child)))
            if key in seen:
                continue  # the same node under both edges and nodes
            seen.add(key)
            emit(sel, node_kind, child, depth + 1, item.get("id"))

    root = schema.query_type
    assert root is not None
    for node, on in _fields(walk, operation.selection_set, root):
        kind = _child(walk, node, on)
        key = node.alias.value if node.alias else node.name.value
        if not is_connection(kind) or not isinstance(data, dict) or data.get(key) is None:
            continue
        assert kind is not None
        seen_top: set[str] = set()
        for sel, node_kind, list_key, edge_key in _node_selections(walk, node, kind):
            for row in data[key].get(list_key) or []:
                item = row.get(edge_key) if edge_key else row
                marker = str(item.get("id", id(item)))
                if marker not in seen_top:
                    seen_top.add(marker)
                    emit(sel, node_kind, item, 0, None)
    if grouped:
        return [row for _, row in rows]
    return [row for _, row in sorted(rows, key=lambda pair: pair[0])]


# -- REST-shaped payloads (webhooks) --------------------------------------------------------------
def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def rest_product(product: Product, base_url: str) -> dict[str, Any]:
    """The REST Admin shape the ``products/*`` webhooks carry (tags a comma-separated string, numeric ids)."""
    images = [
        {
            "id": image.id,
            "product_id": product.id,
            "position": n + 1,
            "alt": image.alt,
            "width": image.width,
            "height": image.height,
            "src": base_url + image.path + "?v=1",
            "variant_ids": [],
            "admin_graphql_api_id": gid("ProductImage", image.id),
        }
        for n, image in enumerate(m for m in product.media if m.status == "READY")  # images: ready ones only
    ]
    return {
        "id": product.id,
        "admin_graphql_api_id": product.gid,
        "title": product.title,
        "body_html": product.description_html,
        "vendor": product.vendor,
        "product_type": product.product_type,
        "handle": product.handle,
        "created_at": product.created_at,
        "updated_at": product.updated_at,
        "published_at": product.created_at,
        "status": product.status.lower(),
        "tags": ", ".join(product.tags),
        "options": [
            {"name": name, "position": 1, "values": [v.title for v in product.variants]}
            for name in sorted({option_name(product, v) for v in product.variants})
        ],
        "variants": [
            {
                "id": v.id,
                "product_id": product.id,
                "title": v.title,
                "price": v.price,
                "sku": v.sku,
                "option1": v.title,
                "option2": None,
                "option3": None,
                "position": v.position,
                "barcode": v.barcode,
                "admin_graphql_api_id": gid("ProductVariant", v.id),
            }
            for v in product.variants
        ],
        "images": images,
        "image": images[0] if images else None,
        "media": [
            {
                "id": image.id,
                "product_id": product.id,
                "position": n + 1,
                "alt": image.alt,
                "status": image.status.lower(),
                "media_content_type": "IMAGE",
                "preview_image": {"width": image.width, "height": image.height, "src": base_url + image.path + "?v=1"},
                "admin_graphql_api_id": gid("MediaImage", image.id),
            }
            for n, image in enumerate(product.media)
        ],
    }


def stable_hex(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


# -- views: what the resolvers return (dicts; a callable value is a field with arguments) ---------
def _bulk(info: Any) -> bool:
    return bool(info.context.get("bulk"))


def image_view(image: Image, base_url: str) -> dict[str, Any]:
    ready = image.status == "READY"
    picture = (
        {"id": gid("ImageSource", image.id), "url": base_url + image.path + "?v=1", "altText": image.alt,
         "width": image.width, "height": image.height}
        if ready
        else None
    )  # fmt: skip
    return {
        "__typename": "MediaImage",
        "_pos": image.id,
        "id": gid("MediaImage", image.id),
        "alt": image.alt,
        "mediaContentType": "IMAGE",
        "status": image.status,
        "fileStatus": image.status,
        "mediaErrors": [dict(error) for error in image.errors],
        "preview": {"image": picture, "status": image.status},
        "image": picture,  # null until the media is READY, as Shopify answers
        "mimeType": image.mime,
    }


def option_name(product: Product, variant: Variant) -> str:
    """The name of a variant's one option: Shopify's ``Title`` for a product without options (its single
    variant is "Default Title"), otherwise the demo catalog's ``Size`` (apparel) or ``Color``."""
    if variant.title == "Default Title":
        return "Title"
    return "Size" if product.product_type == "Apparel" else "Color"


def variant_view(variant: Variant, product: Product, catalog: Catalog, base_url: str) -> dict[str, Any]:
    return {
        "__typename": "ProductVariant",
        "_pos": variant.id,
        "id": gid("ProductVariant", variant.id),
        "title": variant.title,
        "sku": variant.sku,
        "price": variant.price,
        "position": variant.position,
        "barcode": variant.barcode,
        "selectedOptions": [{"name": option_name(product, variant), "value": variant.title}],
        "product": lambda info: product_view(product, catalog, base_url),
    }


def collection_view(collection: Collection, catalog: Catalog, base_url: str) -> dict[str, Any]:
    def products(info: Any, **args: Any) -> dict[str, Any]:
        items = [product_view(catalog.products[p], catalog, base_url) for p in sorted(collection.product_ids)
                 if p in catalog.products]  # fmt: skip
        return connection(items, args, bulk=_bulk(info), name="products")

    return {
        "__typename": "Collection",
        "_pos": collection.id,
        "id": collection.gid,
        "title": collection.title,
        "handle": collection.handle,
        "products": products,
        "productsCount": {"count": len(collection.product_ids), "precision": "EXACT"},
    }


def product_view(product: Product, catalog: Catalog, base_url: str) -> dict[str, Any]:
    def variants(info: Any, **args: Any) -> dict[str, Any]:
        items = [variant_view(v, product, catalog, base_url) for v in product.variants]
        return connection(items, args, bulk=_bulk(info), name="variants")

    def media(info: Any, **args: Any) -> dict[str, Any]:
        items = [image_view(catalog.read(m, info), base_url) for m in list(product.media)]
        # a read may have dropped an image (over 20 megapixels): answer what is still on the product
        items = [item for item in items if any(m.id == item["_pos"] for m in product.media)]
        return connection(items, args, bulk=_bulk(info), name="media")

    def featured(info: Any) -> dict[str, Any] | None:
        while product.media:
            first = product.media[0]
            catalog.read(first, info)
            if product.media and product.media[0] is first:  # not dropped by the read
                return image_view(first, base_url)
        return None

    def collections(info: Any, **args: Any) -> dict[str, Any]:
        items = [collection_view(c, catalog, base_url) for c in catalog.collections_of(product.id)]
        return connection(items, args, bulk=_bulk(info), name="collections")

    return {
        "__typename": "Product",
        "_pos": product.id,
        "id": product.gid,
        "title": product.title,
        "handle": product.handle,
        "descriptionHtml": product.description_html,
        "description": " ".join(re.sub(r"<[^>]+>", " ", product.description_html).split()),
        "productType": product.product_type,
        "vendor": product.vendor,
        "tags": list(product.tags),
        "status": product.status,
        "createdAt": product.created_at,
        "updatedAt": product.updated_at,
        "variants": variants,
        "media": media,
        "collections": collections,
        "featuredMedia": featured,
        "variantsCount": {"count": len(product.variants), "precision": "EXACT"},
        "mediaCount": {"count": len(product.media), "precision": "EXACT"},
    }
