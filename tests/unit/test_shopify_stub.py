"""The Shopify stub, through a real httpx client: OAuth with rotating expiring tokens, Admin GraphQL with cost
and throttling, bulk operations and their JSONL, signed webhooks, programmable failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from PIL import Image

from dev.stubs import shopify_catalog as cat
from dev.stubs.shopify import (
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH_RECOVERY,
    REFRESH_TOKEN_TTL,
    Clock,
    ShopifyStub,
    bulk_finish_payload,
    running,
    sign_query,
)

API = "/admin/api/2026-10/graphql.json"
T0 = 1_800_000_000.0


@pytest.fixture
def stub() -> Iterator[ShopifyStub]:
    with running(ShopifyStub(clock=Clock(frozen=T0))) as served:
        yield served


def admin(stub: ShopifyStub, token: str | None = None) -> httpx.Client:
    token = token or stub.issue_tokens()["access_token"]
    return httpx.Client(base_url=stub.url, headers={"X-Shopify-Access-Token": token}, trust_env=False, timeout=5)


def gql(client: httpx.Client, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post(API, json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def token_call(stub: ShopifyStub, **params: Any) -> httpx.Response:
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **params}
    return httpx.post(stub.url + "/admin/oauth/access_token", json=body, trust_env=False)


def authorize(stub: ShopifyStub, state: str = "nonce-1") -> dict[str, str]:
    response = httpx.get(stub.authorize_url("https://app.test/shopify/callback", state), trust_env=False)
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.netloc == "app.test" and location.path == "/shopify/callback"
    return dict(parse_qsl(location.query))


# -- OAuth ----------------------------------------------------------------------------------------
def test_authorize_redirects_with_a_signed_callback_query(stub: ShopifyStub) -> None:
    params = authorize(stub)
    assert set(params) == {"code", "hmac", "host", "shop", "state", "timestamp"}
    assert (params["shop"], params["state"], params["timestamp"]) == (
        "demo-shop.myshopify.com",
        "nonce-1",
        str(int(T0)),
    )
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "hmac")
    assert params["hmac"] == hmac.new(CLIENT_SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert base64.urlsafe_b64decode(params["host"] + "==") == b"admin.shopify.com/store/demo-shop"
    assert sign_query(params | {"state": "other"}, CLIENT_SECRET) != params["hmac"]


def test_authorize_refuses_an_unknown_app_or_redirect() -> None:
    with running(ShopifyStub(redirect_uris=["https://app.test/cb"])) as stub:
        wrong_app = httpx.get(stub.url + "/admin/oauth/authorize?client_id=x&redirect_uri=https://app.test/cb")
        wrong_uri = httpx.get(stub.authorize_url("https://evil.test/cb", "s"))
    assert (wrong_app.status_code, wrong_uri.status_code) == (400, 400)
    assert "Location" not in wrong_uri.headers and "not whitelisted" in wrong_uri.text


def test_a_code_buys_one_expiring_token_pair(stub: ShopifyStub) -> None:
    code = authorize(stub)["code"]
    first = token_call(stub, code=code, expiring=1)
    again = token_call(stub, code=code, expiring=1)
    assert first.status_code == 200
    pair = first.json()
    assert pair["expires_in"] == 3600 and pair["refresh_token_expires_in"] == REFRESH_TOKEN_TTL
    assert pair["scope"] == "read_products,write_products"
    assert again.status_code == 400 and again.json()["error"] == "invalid_request"
    assert stub.token_valid(pair["access_token"])


def test_without_expiring_the_token_never_expires_and_has_no_refresh_token(stub: ShopifyStub) -> None:
    form = httpx.post(
        stub.url + "/admin/oauth/access_token",
        data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": authorize(stub)["code"]},
    )
    assert set(form.json()) == {"access_token", "scope"}
    stub.clock.advance(10 * 365 * 86400)
    assert stub.token_valid(form.json()["access_token"])


def test_a_wrong_client_secret_is_refused(stub: ShopifyStub) -> None:
    response = token_call(stub, code=authorize(stub)["code"], client_secret="nope", expiring=1)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_refresh_rotates_and_the_used_token_lasts_until_its_replacement_is_used(stub: ShopifyStub) -> None:
    pair = stub.issue_tokens()
    second = token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"]).json()
    assert second["refresh_token"] != pair["refresh_token"] and second["access_token"] != pair["access_token"]
    # the response was lost: the old refresh token still works, with the same replacement
    retry = token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"]).json()
    assert retry["refresh_token"] == second["refresh_token"] and stub.token_valid(retry["access_token"])
    third = token_call(stub, grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert third.status_code == 200
    stale = token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"


def test_strict_rotation_refuses_the_old_refresh_token_at_once() -> None:
    with running(ShopifyStub(retain_previous_refresh=False)) as stub:
        pair = stub.issue_tokens()
        assert token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"]).status_code == 200
        again = token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_used_refresh_token_can_be_retried_for_thirty_days_only(stub: ShopifyStub) -> None:
    pair = stub.issue_tokens()
    token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    stub.clock.advance(REFRESH_RECOVERY + 1)
    late = token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


def test_tokens_expire_with_the_clock(stub: ShopifyStub) -> None:
    pair = stub.issue_tokens()
    client = admin(stub, pair["access_token"])
    assert client.post(API, json={"query": "{ shop { name } }"}).status_code == 200
    stub.clock.advance(3600)
    expired = client.post(API, json={"query": "{ shop { name } }"})
    assert expired.status_code == 401 and "Invalid API key or access token" in expired.json()["errors"]
    stub.clock.advance(REFRESH_TOKEN_TTL)
    assert token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"]).status_code == 400


def test_revocation_refuses_the_refresh_and_the_api(stub: ShopifyStub) -> None:
    pair = stub.issue_tokens()
    stub.revoke()
    refused = token_call(stub, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert admin(stub, pair["access_token"]).post(API, json={"query": "{ shop { name } }"}).status_code == 401


# -- Admin GraphQL --------------------------------------------------------------------------------
PAGE = """query($after: String) { products(first: 20, after: $after) {
  pageInfo { hasNextPage endCursor }
  edges { cursor node { id title handle descriptionHtml productType vendor tags
    collections(first: 5) { nodes { title } }
    variants(first: 10) { nodes { sku price } }
    media(first: 5) { nodes { ... on MediaImage { id alt status image { url width height } } } } } } } }"""


def test_cursor_paging_reads_the_fifty_products_with_their_fields(stub: ShopifyStub) -> None:
    client = admin(stub)
    products: list[dict[str, Any]] = []
    after = None
    waits = 0
    while True:
        body = gql(client, PAGE, after=after)
        if "data" not in body:  # THROTTLED (the frozen clock restores nothing): wait as a client would
            cost = body["extensions"]["cost"]
            assert body["errors"][0]["extensions"]["code"] == "THROTTLED"
            status = cost["throttleStatus"]
            stub.clock.advance((cost["requestedQueryCost"] - status["currentlyAvailable"]) / status["restoreRate"])
            waits += 1
            continue
        page = body["data"]["products"]
        products += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(products) == 50 and len({p["handle"] for p in products}) == 50
    assert waits == 1  # 642 points a page: the third page waits for the bucket
    first = products[0]
    assert first["title"] and first["descriptionHtml"].startswith("<p>") and first["vendor"] and first["tags"]
    assert all(v["sku"].startswith("EPX-") for p in products for v in p["variants"]["nodes"])
    assert {c["title"] for p in products for c in p["collections"]["nodes"]} == {
        "Best Sellers",
        "Gift Ideas",
        "New Arrivals",
    }
    image = first["media"]["nodes"][0]
    assert image["status"] == "READY" and image["id"].startswith("gid://shopify/MediaImage/")
    png = httpx.get(image["image"]["url"])
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (image["image"]["width"], image["image"]["height"])
    # the same catalog every time
    assert ShopifyStub().catalog.products.keys() == stub.catalog.products.keys()


def test_product_by_id_search_and_collections(stub: ShopifyStub) -> None:
    client = admin(stub)
    target = stub.product(7)
    one = gql(
        client, "query($id: ID!) { product(id: $id) { title variants(first: 3) { nodes { sku } } } }", id=target.gid
    )
    assert one["data"]["product"]["title"] == target.title
    by_sku = gql(
        client,
        "query($q: String) { products(first: 5, query: $q) { nodes { id } } }",
        q=f"sku:{target.variants[0].sku}",
    )
    assert by_sku["data"]["products"]["nodes"] == [{"id": target.gid}]
    tagged = gql(client, "{ products(first: 50, query: \"tag:apparel -vendor:'Maple & Co'\") { nodes { tags } } }")
    assert tagged["data"]["products"]["nodes"] and all(
        "apparel" in p["tags"] for p in tagged["data"]["products"]["nodes"]
    )
    collections = gql(
        client,
        "{ collections(first: 10) { nodes { title productsCount { count } products(first: 2) { nodes { id } } } } }",
    )
    assert [c["title"] for c in collections["data"]["collections"]["nodes"]] == [
        "Best Sellers",
        "Gift Ideas",
        "New Arrivals",
    ]
    missing = gql(client, '{ product(id: "gid://shopify/Product/1") { id } }')
    assert missing["data"]["product"] is None


def test_collection_filter_and_variant_options(stub: ShopifyStub) -> None:
    client = admin(stub)
    gifts = gql(client, '{ products(first: 50, query: "collection_id:500001") { nodes { id } } }')
    members = sorted(stub.catalog.collections[500001].product_ids)
    assert [n["id"] for n in gifts["data"]["products"]["nodes"]] == [cat.gid("Product", i) for i in members]
    counted = gql(client, '{ productsCount(query: "collection_id:500001") { count } }')
    assert counted["data"]["productsCount"]["count"] == len(members)
    beanie = next(p for p in stub.catalog.products.values() if p.product_type == "Apparel")
    options = gql(
        client,
        "query($id: ID!) { product(id: $id) { variants(first: 3) { nodes { selectedOptions { name value } } } } }",
        id=beanie.gid,
    )
    nodes = options["data"]["product"]["variants"]["nodes"]
    assert [n["selectedOptions"] for n in nodes] == [[{"name": "Size", "value": v.title}] for v in beanie.variants]
    rest = cat.rest_product(beanie, stub.url)
    assert rest["options"] == [{"name": "Size", "position": 1, "values": [v.title for v in beanie.variants]}]
    assert [v["option1"] for v in rest["variants"]] == [v.title for v in beanie.variants]


def test_connections_need_first_or_last_at_most_250(stub: ShopifyStub) -> None:
    client = admin(stub)
    unbounded = gql(client, "{ products { nodes { id } } }")
    too_many = gql(client, "{ products(first: 251) { nodes { id } } }")
    assert "first or last" in unbounded["errors"][0]["message"] and too_many["errors"]
    invalid = gql(client, "{ products(first: 1) { nodes { nope } } }")
    assert "nope" in invalid["errors"][0]["message"] and "data" not in invalid


def test_bad_versions_tokens_and_bodies(stub: ShopifyStub) -> None:
    client = admin(stub)
    assert client.post("/admin/api/2019-01/graphql.json", json={"query": "{ shop { name } }"}).status_code == 404
    anonymous = httpx.post(stub.url + API, json={"query": "{ shop { name } }"})
    assert anonymous.status_code == 401
    garbled = client.post(API, content=b"{not json", headers={"Content-Type": "application/json"})
    assert garbled.status_code == 400 and garbled.json()["errors"]["query"]


# -- cost and throttling --------------------------------------------------------------------------
COSTLY = "{ products(first: 10) { edges { node { id variants(first: 5) { nodes { sku } } } } } }"


def test_cost_is_requested_by_first_and_refunded_by_what_came_back(stub: ShopifyStub) -> None:
    body = gql(admin(stub), COSTLY)
    cost = body["extensions"]["cost"]
    # 2 + 10 x (1 product + 2 + 5 x 1 variant); actual: 10 products with 1-3 variants each
    variants = sum(len(p["node"]["variants"]["nodes"]) for p in body["data"]["products"]["edges"])
    assert cost["requestedQueryCost"] == 82 and cost["actualQueryCost"] == 2 + 10 * 3 + variants
    assert cost["throttleStatus"] == {"maximumAvailable": 1000.0, "currentlyAvailable": 1000 - cost["actualQueryCost"],
                                      "restoreRate": 100.0}  # fmt: skip


def test_an_empty_bucket_throttles_with_http_200_until_it_refills(stub: ShopifyStub) -> None:
    client = admin(stub)
    stub.drain(950)
    throttled = client.post(API, json={"query": COSTLY})
    assert throttled.status_code == 200
    body = throttled.json()
    assert body["errors"][0]["extensions"]["code"] == "THROTTLED" and "data" not in body
    assert body["extensions"]["cost"]["actualQueryCost"] is None
    assert body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] == 50
    stub.clock.advance(1)  # 100 points a second
    assert "errors" not in gql(client, COSTLY)


def test_a_query_above_the_single_query_limit_is_refused(stub: ShopifyStub) -> None:
    body = gql(admin(stub), "{ products(first: 250) { nodes { variants(first: 250) { nodes { sku } } } } }")
    assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"


# -- bulk operations ------------------------------------------------------------------------------
BULK = """{ products { edges { node { id title
  variants { edges { node { id sku } } }
  media { edges { node { ... on MediaImage { id image { url } } } } } } } } }"""
RUN = """mutation($q: String!, $g: Boolean!) { bulkOperationRunQuery(query: $q, groupObjects: $g) {
  bulkOperation { id status } userErrors { field message code } } }"""
POLL = (
    "query($id: ID!) { node(id: $id) { ... on BulkOperation { id status objectCount rootObjectCount url errorCode } } }"
)


def run_bulk(client: httpx.Client, query: str = BULK, grouped: bool = False) -> dict[str, Any]:
    started = gql(client, RUN, q=query, g=grouped)["data"]["bulkOperationRunQuery"]
    assert started["userErrors"] == [] and started["bulkOperation"]["status"] == "CREATED"
    statuses = []
    while True:
        operation: dict[str, Any] = gql(client, POLL, id=started["bulkOperation"]["id"])["data"]["node"]
        statuses.append(operation["status"])
        if operation["status"] not in ("CREATED", "RUNNING"):
            assert statuses[0] == "RUNNING"
            return operation


def test_a_bulk_query_writes_parents_then_children_with_parent_ids(stub: ShopifyStub) -> None:
    client = admin(stub)
    operation = run_bulk(client)
    assert operation["status"] == "COMPLETED" and operation["url"]
    rows = [json.loads(line) for line in httpx.get(operation["url"]).text.splitlines()]
    assert operation["objectCount"] == str(len(rows)) and operation["rootObjectCount"] == "50"
    parents = [r["id"] for r in rows if "__parentId" not in r]
    assert parents == [p.gid for p in stub.catalog.products.values()]
    assert all("__parentId" not in r for r in rows[:50])  # ungrouped: children after every parent here
    children = rows[50:]
    assert {c["__parentId"] for c in children} <= set(parents)
    assert sum(c["id"].startswith("gid://shopify/ProductVariant/") for c in children) == sum(
        len(p.variants) for p in stub.catalog.products.values()
    )
    assert all("variants" not in r and "media" not in r for r in rows)
    current = gql(client, "{ currentBulkOperation { id status } }")["data"]["currentBulkOperation"]
    assert current == {"id": gql(client, POLL, id=current["id"])["data"]["node"]["id"], "status": "COMPLETED"}


def test_grouped_output_puts_children_right_below_their_parent(stub: ShopifyStub) -> None:
    operation = run_bulk(admin(stub), grouped=True)
    rows = [json.loads(line) for line in httpx.get(operation["url"]).text.splitlines()]
    parent = None
    for row in rows:
        if "__parentId" in row:
            assert row["__parentId"] == parent
        else:
            parent = row["id"]


def test_bulk_queries_of_the_wrong_shape_are_user_errors(stub: ShopifyStub) -> None:
    client = admin(stub)
    for query, words in [
        ("{ shop { name } }", "at least one connection"),
        ("{ products { edges { node { title variants { edges { node { sku } } } } } } }", "must select the 'id'"),
        ("{ collections { nodes { id products { nodes { id variants { nodes { id } } } } } } }", "nesting depth"),
        ("{ products { nodes { nope } } }", "Invalid bulk query"),
    ]:
        answer = gql(client, RUN, q=query, g=False)["data"]["bulkOperationRunQuery"]
        assert answer["bulkOperation"] is None and words in answer["userErrors"][0]["message"], query


def test_the_result_url_expires_after_seven_days_and_the_finish_webhook_names_the_operation(
    stub: ShopifyStub, receiver: Receiver
) -> None:
    operation = run_bulk(admin(stub))
    number = int(operation["id"].rsplit("/", 1)[1])
    delivery = stub.deliver("bulk_operations/finish", bulk_finish_payload(stub.bulk_operations[number]), receiver.url)
    body = json.loads(receiver.received[0][1])
    assert delivery.status == 200 and (body["admin_graphql_api_id"], body["status"]) == (operation["id"], "completed")
    stub.clock.advance(7 * 86400 + 1)
    assert httpx.get(operation["url"]).status_code == 400


def test_a_token_without_product_scopes_is_denied(stub: ShopifyStub) -> None:
    client = admin(stub, stub.issue_tokens(scope="read_orders")["access_token"])
    denied = gql(client, "{ products(first: 1) { nodes { id } } shop { name } }")
    assert denied["errors"][0]["extensions"]["code"] == "ACCESS_DENIED"
    operation = run_bulk(client)
    assert (operation["status"], operation["errorCode"]) == ("FAILED", "ACCESS_DENIED")


def test_a_failed_bulk_operation_has_an_error_code_and_no_url(stub: ShopifyStub) -> None:
    stub.fail_next_bulk("TIMEOUT")
    operation = run_bulk(admin(stub))
    assert (operation["status"], operation["errorCode"], operation["url"]) == ("FAILED", "TIMEOUT", None)


# -- webhooks -------------------------------------------------------------------------------------
class Receiver:
    """A webhook endpoint on loopback that keeps what it received and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/shopify"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    yield endpoint
    endpoint.close()


def test_a_product_update_is_delivered_signed_with_shopify_headers(stub: ShopifyStub, receiver: Receiver) -> None:
    product = stub.product(3)
    delivery = stub.update_product(product.id, receiver.url, title="Renamed", tags=["a", "b"])
    assert delivery is not None and delivery.status == 200
    headers, body = receiver.received[0]
    expected = base64.b64encode(hmac.new(CLIENT_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    assert headers["x-shopify-hmac-sha256"] == expected
    assert headers["x-shopify-topic"] == "products/update" and headers["x-shopify-shop-domain"] == stub.shop
    assert headers["x-shopify-api-version"] == "2026-10" and headers["x-shopify-webhook-id"] == delivery.webhook_id
    assert headers["x-shopify-event-id"] and headers["x-shopify-triggered-at"]
    payload = json.loads(body)
    assert (payload["id"], payload["title"], payload["tags"]) == (product.id, "Renamed", "a, b")
    assert payload["admin_graphql_api_id"] == product.gid and payload["media"][0]["media_content_type"] == "IMAGE"
    fetched = gql(admin(stub), "query($id: ID!) { product(id: $id) { title } }", id=product.gid)
    assert fetched["data"]["product"]["title"] == "Renamed"


def test_create_delete_uninstall_and_the_compliance_topics(stub: ShopifyStub, receiver: Receiver) -> None:
    pair = stub.issue_tokens()
    created, _ = stub.create_product("Brand New Lamp", receiver.url)
    stub.delete_product(created.id, receiver.url)
    stub.uninstall(receiver.url)
    stub.shop_redact(receiver.url)
    stub.customers_redact(receiver.url)
    stub.customers_data_request(receiver.url)
    topics = [h["x-shopify-topic"] for h, _ in receiver.received]
    assert topics == ["products/create", "products/delete", "app/uninstalled", "shop/redact", "customers/redact",
                      "customers/data_request"]  # fmt: skip
    bodies = [json.loads(b) for _, b in receiver.received]
    assert bodies[0]["title"] == "Brand New Lamp" and bodies[1] == {"id": created.id}
    assert bodies[2]["myshopify_domain"] == stub.shop and bodies[3]["shop_domain"] == stub.shop
    assert bodies[4]["customer"]["id"] and bodies[5]["data_request"]["id"]
    assert not stub.token_valid(pair["access_token"])  # uninstalling revoked the tokens
    assert created.id not in stub.catalog.products


def test_a_redelivery_keeps_the_webhook_id_and_a_wrong_secret_is_detectable(stub: ShopifyStub) -> None:
    endpoint = Receiver(status=401)
    try:
        first = stub.deliver("shop/redact", {"shop_domain": stub.shop}, endpoint.url, secret="forged")
        again = stub.deliver("shop/redact", {"shop_domain": stub.shop}, endpoint.url, webhook_id=first.webhook_id)
    finally:
        endpoint.close()
    assert (first.status, again.status) == (401, 401) and first.webhook_id == again.webhook_id
    assert first.event_id != again.event_id
    unreachable = stub.deliver("shop/redact", {}, "http://127.0.0.1:9/closed")
    assert unreachable.status == 0 and len(stub.deliveries) == 3


# -- programmable failures ------------------------------------------------------------------------
def test_failures_for_the_next_requests_on_a_path(stub: ShopifyStub) -> None:
    client = admin(stub)
    stub.fail("429", times=2, path=API)
    stub.fail("503", path=API)
    statuses = [client.post(API, json={"query": "{ shop { name } }"}) for _ in range(4)]
    assert [r.status_code for r in statuses] == [429, 429, 503, 200]
    assert statuses[0].headers["Retry-After"] == "2.0"
    stub.fail("malformed", path=API)
    with pytest.raises(json.JSONDecodeError):
        client.post(API, json={"query": "{ shop { name } }"}).json()
    stub.fail("drop")
    with pytest.raises(httpx.TransportError):
        client.post(API, json={"query": "{ shop { name } }"})
    assert [r.status for r in stub.seen("POST", API)][-2:] == [200, 0]


def test_an_image_can_fail_and_an_unknown_one_is_404(stub: ShopifyStub) -> None:
    path = stub.product(0).media[0].path
    stub.fail("500", path=path)
    assert httpx.get(stub.url + path).status_code == 500
    assert httpx.get(stub.url + path).status_code == 200
    assert httpx.get(stub.url + "/cdn/shop/files/nothing.png").status_code == 404


# -- media (sync-back) ----------------------------------------------------------------------------
PUSH = """
mutation($id: ID!, $media: [CreateMediaInput!]!) {
  productUpdate(product: {id: $id}, media: $media) {
    product { id media(last: 1) { nodes { id status ... on MediaImage { image { url } } } } }
    userErrors { field message }
  }
}
"""
READ = "query($id: ID!) { node(id: $id) { ... on MediaImage { status mediaErrors { code message details } image { url width height } } } }"  # noqa: E501
REORDER = """
mutation($id: ID!, $moves: [MoveInput!]!) {
  productReorderMedia(id: $id, moves: $moves) { job { id done } mediaUserErrors { code field message } }
}
"""
FILES = """
mutation($files: [FileUpdateInput!]!) {
  fileUpdate(files: $files) { files { id fileStatus } userErrors { code field message } }
}
"""


def test_a_pushed_image_is_appended_then_processed_over_reads(stub: ShopifyStub) -> None:
    stub.media_reads_until_ready = 2
    client = admin(stub)
    product = stub.product(0)
    before = len(product.media)
    source = stub.url + stub.product(1).media[0].path  # the stub's own CDN is a source like any other
    answer = gql(client, PUSH, id=product.gid, media=[{"originalSource": source, "mediaContentType": "IMAGE",
                                                       "alt": "pushed"}])  # fmt: skip
    assert answer["extensions"]["cost"]["requestedQueryCost"] == 10
    [node] = answer["data"]["productUpdate"]["product"]["media"]["nodes"]
    assert (node["status"], node["image"]) == ("UPLOADED", None)
    assert product.media[-1].alt == "pushed" and len(product.media) == before + 1
    reads = [gql(client, READ, id=node["id"])["data"]["node"] for _ in range(3)]
    assert [r["status"] for r in reads] == ["PROCESSING", "PROCESSING", "READY"]
    assert reads[2]["mediaErrors"] == [] and (reads[2]["image"]["width"], reads[2]["image"]["height"]) == (256, 256)
    served = httpx.get(reads[2]["image"]["url"], trust_env=False)
    assert served.status_code == 200 and served.content == httpx.get(source, trust_env=False).content


def test_product_update_refusals(stub: ShopifyStub) -> None:
    client = admin(stub)
    before = len(stub.product(0).media)
    medium = {"originalSource": "https://cdn.example/x.png", "mediaContentType": "IMAGE"}
    gone = gql(client, PUSH, id="gid://shopify/Product/1", media=[medium])["data"]["productUpdate"]
    assert gone == {"product": None, "userErrors": [{"field": ["id"], "message": "Product does not exist"}]}
    bad = gql(client, PUSH, id=stub.product(0).gid, media=[{**medium, "originalSource": "ftp:/x"}])
    assert bad["data"]["productUpdate"]["userErrors"][0]["field"] == ["media", "0", "originalSource"]
    assert len(stub.product(0).media) == before  # nothing appended


def test_a_failure_is_kept_in_media_errors(stub: ShopifyStub) -> None:
    client = admin(stub)
    stub.fail_next_media("FILE_STORAGE_LIMIT_EXCEEDED")
    source = stub.url + stub.product(1).media[0].path
    answer = gql(client, PUSH, id=stub.product(0).gid, media=[{"originalSource": source, "mediaContentType": "IMAGE"}])
    [node] = answer["data"]["productUpdate"]["product"]["media"]["nodes"]
    reads = [gql(client, READ, id=node["id"])["data"]["node"] for _ in range(2)]
    assert [r["status"] for r in reads] == ["PROCESSING", "FAILED"] and reads[1]["image"] is None
    assert reads[1]["mediaErrors"][0]["code"] == "FILE_STORAGE_LIMIT_EXCEEDED"


def test_reorder_moves_apply_one_after_another(stub: ShopifyStub) -> None:
    client = admin(stub)
    product = stub.product(1)  # three media
    a, b, c = (cat.gid("MediaImage", m.id) for m in product.media)
    answer = gql(client, REORDER, id=product.gid, moves=[{"id": c, "newPosition": "0"}, {"id": c, "newPosition": "9"}])
    assert answer["data"]["productReorderMedia"]["mediaUserErrors"] == []
    assert answer["data"]["productReorderMedia"]["job"]["id"].startswith("gid://shopify/Job/")
    assert [cat.gid("MediaImage", m.id) for m in product.media] == [a, b, c]  # to the front, then past the end
    gql(client, REORDER, id=product.gid, moves=[{"id": c, "newPosition": "0"}, {"id": a, "newPosition": "1"}])
    assert [cat.gid("MediaImage", m.id) for m in product.media] == [c, a, b]
    featured = gql(client, "query($id: ID!) { product(id: $id) { featuredMedia { id } } }", id=product.gid)
    assert featured["data"]["product"]["featuredMedia"]["id"] == c
    integer = gql(client, REORDER, id=product.gid, moves=[{"id": a, "newPosition": 0}])
    assert "must be encoded as a string" in integer["errors"][0]["message"]
    stranger = cat.gid("MediaImage", stub.product(2).media[0].id)
    refused = gql(client, REORDER, id=product.gid, moves=[{"id": stranger, "newPosition": "0"}])
    assert refused["data"]["productReorderMedia"]["mediaUserErrors"][0]["code"] == "MEDIA_DOES_NOT_EXIST_ON_PRODUCT"
    gone = gql(client, REORDER, id="gid://shopify/Product/1", moves=[{"id": a, "newPosition": "0"}])
    assert gone["data"]["productReorderMedia"]["mediaUserErrors"][0]["code"] == "PRODUCT_DOES_NOT_EXIST"


def test_file_update_takes_a_media_off_the_product_and_the_file_stays(stub: ShopifyStub) -> None:
    client = admin(stub)
    product = stub.product(1)
    first = product.media[0]
    media = cat.gid("MediaImage", first.id)
    stranger = "gid://shopify/MediaImage/1"
    unknown = gql(client, FILES, files=[{"id": media, "referencesToRemove": [product.gid]},
                                        {"id": stranger, "referencesToRemove": [product.gid]}])  # fmt: skip
    assert unknown["data"]["fileUpdate"]["userErrors"] == [
        {"code": "FILE_DOES_NOT_EXIST", "field": ["files", "1", "id"],
         "message": "File id gid://shopify/MediaImage/1 does not exist."}
    ]  # fmt: skip
    assert product.media[0] is first  # nothing changed
    removed = gql(client, FILES, files=[{"id": media, "referencesToRemove": [product.gid]}])["data"]["fileUpdate"]
    assert removed == {"files": [{"id": media, "fileStatus": "READY"}], "userErrors": []}
    assert first not in product.media and stub.file(first.id) is first
    assert gql(client, READ, id=media)["data"]["node"]["status"] == "READY"  # still a file of the shop
    rest = cat.rest_product(product, stub.url)
    assert first.id not in [m["id"] for m in rest["media"]] + [i["id"] for i in rest["images"]]
    gql(client, FILES, files=[{"id": media, "referencesToAdd": [product.gid]}])
    assert product.media[-1] is first
