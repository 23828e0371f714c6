"""The whole platform on one machine: ``make dev`` (``python -m dev.stack``).

Starts the Firestore emulator and a moto S3 server (standing in for R2), serves every function
entry point under ``/<entry point>/`` on one port, runs a local Cloud Tasks dispatcher, and plays
the identity provider: a JWKS at ``/_dev/jwks.json`` and tokens from ``POST /_dev/token``.
Stripe is the local stub (``dev/stubs/stripe.py``): Checkout sessions point at its hosted page, and
paying there (``POST`` the session's ``url``) sends Stripe's signed events to ``/stripe_webhook/``.
Email goes to a local SMTP sink (``dev/mail_sink.py``): every message lands in ``.dev/mail/*.eml``
and ``/_dev/mail`` lists them.
The stores are local stubs too: a Shopify shop (``dev/stubs/shopify.py``) and a WooCommerce store
(``dev/stubs/woocommerce.py``), each with a demo catalog of 50 products; the functions connect to them
as to the real platforms, and ``/_dev/shopify/…`` and ``/_dev/woocommerce/…`` change their catalogs so
their signed webhooks reach ``/store_webhook/``.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dev.mail_sink import MailSink
    from dev.stores import DevStores
    from dev.stubs.shopify import ShopifyStub
    from dev.stubs.stripe import StripeStub, Webhook

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".dev"
ISSUER = "http://127.0.0.1:{port}/_dev"
AUDIENCE = "epox-dev"
PROJECT = "epox-dev"
# Not secrets: the local Stripe stub's API key, its webhook secret and made-up price ids.
DEV_STRIPE_API_KEY = "sk_test_epox_local_dev"
DEV_WEBHOOK_SECRET = "whsec_epox_local_dev"  # noqa: S105 - the local stack only
DEV_PRICE_IDS = {
    **{
        f"{plan}:{interval}": f"price_dev_{plan}_{interval}"
        for plan in ("starter", "growth", "pro", "scale")
        for interval in ("monthly", "annual")
    },
    **{pack: f"price_dev_{pack}" for pack in ("pack_100", "pack_500", "pack_2000")},
}
BUCKET = "epox-dev"
# Not a secret: signs the unsubscribe links of the local stack's emails (stable, so old links keep working).
DEV_UNSUBSCRIBE_SECRET = "epox-local-dev-unsubscribe"  # noqa: S105 - the local stack only
# The version of the local store credential key (.dev/store-credential-keys.json holds its key).
DEV_CREDENTIAL_KEY_VERSION = "v1"


def _load_or_create_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, Ed25519PrivateKey):
            return key
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return key


def load_or_create_credential_keys(path: Path) -> str:
    """``STORE_CREDENTIAL_KEYS`` of the local stack: generated once and kept in ``path``, so the store
    credentials sealed in an earlier run still open."""
    from shared.credentials import LocalKeyring

    keys: Any = None
    if path.exists():
        try:
            keys = json.loads(path.read_text())
        except ValueError:
            keys = None
    if not isinstance(keys, dict):
        keys = {}
    if not isinstance(keys.get(DEV_CREDENTIAL_KEY_VERSION), str):
        keys[DEV_CREDENTIAL_KEY_VERSION] = LocalKeyring.generate_key()
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
    return json.dumps(keys)


def store_environment(base: str, shopify: ShopifyStub, credential_keys: str) -> dict[str, str]:
    """The store settings of the local stack: the Shopify stub's app credentials and address (every
    shop's ``https://{shop}`` is the stub), plain-http WooCommerce stores, local credential keys, and
    where the stores reach ``store_oauth`` and ``store_webhook`` (this stack)."""
    return {
        "SHOPIFY_CLIENT_ID": shopify.client_id,
        "SHOPIFY_CLIENT_SECRET": shopify.client_secret,
        "SHOPIFY_ADMIN_BASE_URL": shopify.url,
        "WOOCOMMERCE_ALLOW_HTTP": "true",
        "STORE_CREDENTIAL_KEYS": credential_keys,
        "STORE_CREDENTIAL_KEY_VERSION": DEV_CREDENTIAL_KEY_VERSION,
        "STORE_CALLBACK_BASE_URL": f"{base}/store_oauth",
        "STORE_WEBHOOK_BASE_URL": f"{base}/store_webhook",
    }


def shopify_stub(base: str) -> ShopifyStub:
    """The local Shopify shop (50 demo products); it accepts only this stack's OAuth callback."""
    from dev.stubs.shopify import ShopifyStub

    return ShopifyStub(redirect_uris=[f"{base}/store_oauth/oauth/shopify/callback"])


def stripe_environment(stripe_api_base: str) -> dict[str, str]:
    """The Stripe settings of the local stack: the stub's key and address, its webhook secret, the prices."""
    return {
        "STRIPE_API_KEY": DEV_STRIPE_API_KEY,
        "STRIPE_API_BASE": stripe_api_base,
        "STRIPE_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
        "STRIPE_PRICE_IDS": json.dumps(DEV_PRICE_IDS),
    }


def stripe_stub(webhook: Webhook | None) -> StripeStub:
    """The local Stripe: it knows the dev prices (amounts from the plan catalog) and sends its events,
    signed with the dev webhook secret, to ``webhook`` (the stack's ``/stripe_webhook/``)."""
    from dev.stubs.stripe import StripeStub, StubPrice
    from shared.billing.catalog import Interval, load_catalog, price_key

    catalog = load_catalog()
    details: dict[str, StubPrice] = {}
    recurring: dict[Interval, str] = {"monthly": "month", "annual": "year"}
    for plan_id, plan in catalog.plans.items():
        for interval, amount in plan.display_price.items():
            price = DEV_PRICE_IDS.get(price_key(plan_id, interval))
            if price:
                details[price] = StubPrice(amount, recurring[interval])
    for pack_id, pack in catalog.packs.items():
        if pack_id in DEV_PRICE_IDS:
            details[DEV_PRICE_IDS[pack_id]] = StubPrice(pack.display_price)
    return StripeStub(
        api_key=DEV_STRIPE_API_KEY,
        prices=set(DEV_PRICE_IDS.values()),
        price_details=details,
        webhook_secret=DEV_WEBHOOK_SECRET,
        webhook=webhook,
    )


def configure_environment(
    port: int,
    firestore_host: str,
    s3_endpoint: str,
    task_secret: str,
    stripe_api_base: str,
    smtp_port: int = 1025,
    stores: dict[str, str] | None = None,
) -> dict[str, str]:
    """The settings every function reads, pointed at the local services (``stores``: see
    :func:`store_environment`)."""
    base = f"http://127.0.0.1:{port}"
    values = {
        "EPOX_ENV": "development",
        "GCP_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": firestore_host,
        "AUTH_JWKS_URL": f"{base}/_dev/jwks.json",
        "AUTH_ISSUER": ISSUER.format(port=port),
        "AUTH_AUDIENCE": AUDIENCE,
        "CORS_ALLOWED_ORIGINS": json.dumps(["http://localhost:3000", "http://127.0.0.1:3000"]),
        "R2_ENDPOINT_URL": s3_endpoint,
        "R2_ACCESS_KEY_ID": "dev",
        "R2_SECRET_ACCESS_KEY": "dev",
        "R2_BUCKET": BUCKET,
        "R2_REGION": "us-east-1",
        "TASKS_BACKEND": "local",
        "TASKS_AUTH_MODE": "shared_secret",
        "TASKS_DEV_SECRET": task_secret,
        "TASKS_LOCAL_DISPATCHER_URL": f"{base}/_dev/tasks",
        "TASKS_TARGET_BASE_URL": base,
        # No AI credentials on a developer machine: the deterministic offline engine stands in.
        "AI_ENGINE": "offline",
        # Stripe is the local stub (no real keys on a developer machine).
        **stripe_environment(stripe_api_base),
        # The demo serves its sample images from this process and the store stubs listen on loopback
        # (an allowed network is open on every port); nothing else private is reachable.
        "FETCH_ALLOWED_NETWORKS": json.dumps(["127.0.0.1/32"]),
        # Email goes to the local SMTP sink (plain SMTP on loopback, no login).
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_STARTTLS": "false",
        "MAIL_FROM": "Epox (local) <notifications@epox.localhost>",
        "MAIL_UNSUBSCRIBE_SECRET": DEV_UNSUBSCRIBE_SECRET,
        "PUBLIC_BASE_URL": f"{base}/notifications_api",
        **(stores or {}),
    }
    os.environ.update(values)
    return values


def build_dev_app(
    issuer: Any, dispatcher: Any, samples: Path, mail: MailSink | None = None, stores: DevStores | None = None
) -> Any:
    """The ``/_dev`` routes: JWKS, token minting, task submission, sample images, the merged API
    contract, the mails the SMTP sink kept, the store stubs' merchant actions (``dev/stores.py``), an index."""
    from flask import Flask, abort, jsonify, request, send_from_directory

    app = Flask("epox-dev")
    if stores is not None:
        from dev.stores import add_store_routes

        add_store_routes(app, stores)

    @app.get("/_dev/jwks.json")
    def jwks() -> Any:
        return jsonify(issuer.jwks())

    @app.post("/_dev/token")
    def token() -> Any:
        body = request.get_json(silent=True) or {}
        client_id = str(body.get("client_id", "demo-client"))
        role = str(body.get("role", "user"))
        ttl = int(body.get("ttl", 3600))
        # role "admin" stands for an operator here (the /admin/* routes); "platform_admin": false
        # mints a tenant admin without the operator claim, as a merchant's org admin would be.
        platform_admin = body.get("platform_admin", role == "admin") is True
        token = issuer.mint(client_id, role=role, platform_admin=platform_admin, ttl=ttl)
        return jsonify({"token": token, "client_id": client_id, "role": role, "platform_admin": platform_admin})

    @app.post("/_dev/tasks")
    def submit_task() -> Any:
        from datetime import datetime

        doc = request.get_json(force=True)
        schedule = datetime.fromisoformat(doc["schedule_time"]) if doc.get("schedule_time") else None
        accepted = dispatcher.submit(
            queue=doc["queue"],
            name=doc.get("name"),
            url=doc["url"],
            body=doc["body"].encode(),
            schedule_time=schedule,
            headers={str(k): str(v) for k, v in (doc.get("headers") or {}).items()},
        )
        return (jsonify({"accepted": True}), 201) if accepted else (jsonify({"error": "task name exists"}), 409)

    @app.get("/_dev/tasks")
    def list_tasks() -> Any:
        return jsonify(
            [
                {
                    "name": t.name,
                    "url": t.url,
                    "attempts": t.attempts,
                    "outcomes": t.outcomes,
                    "done": t.done,
                    "succeeded": t.succeeded,
                }
                for t in dispatcher.history[-200:]
            ]
        )

    @app.get("/_dev/samples/<path:name>")
    def sample(name: str) -> Any:
        if not (samples / name).is_file():
            abort(404)
        return send_from_directory(samples, name)

    @app.get("/_dev/mail")
    def list_mail() -> Any:
        """What the local SMTP sink received, newest first: subject, to, and the .eml file."""
        return jsonify(mail.messages() if mail is not None else [])

    contract: dict[str, Any] = {}

    @app.get("/_dev/openapi.json")
    def openapi() -> Any:
        """The merged API contract (docs/openapi.json), served for this stack's address."""
        from flask import request

        from dev.openapi import build

        if not contract:
            contract.update(build())
        return jsonify({**contract, "servers": [{"url": request.host_url.rstrip("/"), "description": "this stack"}]})

    @app.get("/")
    def index() -> Any:
        return jsonify({"functions": sorted(rule.rule for rule in app.url_map.iter_rules())})

    return app


def write_samples(directory: Path) -> None:
    """Small product photos for the demo's CSV import, drawn here so nothing is downloaded."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    for name, color in (("mug.jpg", (200, 60, 40)), ("lamp.png", (40, 120, 200)), ("tote.jpg", (60, 160, 90))):
        path = directory / name
        if path.exists():
            continue
        image = Image.new("RGB", (800, 600), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        draw.ellipse((250, 150, 550, 450), fill=color)
        image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("EPOX_DEV_PORT", "8000")))
    parser.add_argument("--firestore-port", type=int, default=int(os.environ.get("EPOX_DEV_FIRESTORE_PORT", "8085")))
    parser.add_argument("--s3-port", type=int, default=int(os.environ.get("EPOX_DEV_S3_PORT", "9000")))
    parser.add_argument(
        "--stripe-port",
        type=int,
        default=int(os.environ.get("EPOX_DEV_STRIPE_PORT", "0")),
        help="the Stripe stub's port (default: a free one; Checkout and portal URLs name it)",
    )
    parser.add_argument(
        "--smtp-port",
        type=int,
        default=int(os.environ.get("EPOX_DEV_SMTP_PORT", "1025")),
        help="the local SMTP sink's port (mails kept in .dev/mail/)",
    )
    parser.add_argument(
        "--shopify-port",
        type=int,
        default=int(os.environ.get("EPOX_DEV_SHOPIFY_PORT", "0")),
        help="the Shopify stub's port (default: a free one; every shop's admin is served there)",
    )
    parser.add_argument(
        "--woo-port",
        type=int,
        default=int(os.environ.get("EPOX_DEV_WOO_PORT", "0")),
        help="the WooCommerce stub's port (default: a free one; connect the store at its address)",
    )
    parser.add_argument("--demo", action="store_true", help="run the scripted demo once the stack is up")
    args = parser.parse_args(argv)

    import httpx
    from moto.server import ThreadedMotoServer
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    from dev.dispatcher import TaskDispatcher
    from dev.emulator import FirestoreEmulator
    from dev.functions import load_function_apps
    from dev.jwt_issuer import DevIssuer
    from dev.mail_sink import MailSink
    from dev.stores import DevStores
    from dev.stubs import shopify as shopify_stubs
    from dev.stubs import woocommerce as woo_stubs
    from dev.stubs.stripe import http_webhook, stub_server

    STATE.mkdir(exist_ok=True)
    print(f"starting the Firestore emulator on 127.0.0.1:{args.firestore_port} (log: .dev/firestore.log)…", flush=True)
    emulator = FirestoreEmulator(port=args.firestore_port, log_path=STATE / "firestore.log").start()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=args.s3_port, verbose=False)
    s3.start()
    s3_endpoint = f"http://127.0.0.1:{args.s3_port}"
    task_secret = secrets.token_urlsafe(24)
    stripe = stub_server(stripe_stub(http_webhook(f"http://127.0.0.1:{args.port}/stripe_webhook/")), args.stripe_port)
    mail = MailSink(STATE / "mail", args.smtp_port).start()
    base = f"http://127.0.0.1:{args.port}"
    # The store stubs live as long as the stack: closed (in reverse) when it stops.
    stubs = contextlib.ExitStack()
    shop = stubs.enter_context(shopify_stubs.running(shopify_stub(base), args.shopify_port))
    woo = stubs.enter_context(woo_stubs.running(woo_stubs.WooStub(), args.woo_port))
    stores = store_environment(base, shop, load_or_create_credential_keys(STATE / "store-credential-keys.json"))
    configure_environment(
        args.port, emulator.host, s3_endpoint, task_secret, stripe.stub.url, args.smtp_port, stores=stores
    )

    from shared.config import get_settings
    from shared.storage import R2ObjectStore

    R2ObjectStore.from_settings(get_settings()).ensure_bucket()

    issuer = DevIssuer(
        issuer=ISSUER.format(port=args.port), audience=AUDIENCE, key=_load_or_create_key(STATE / "dev-jwt-key.pem")
    )
    http = httpx.Client(timeout=600, trust_env=False)

    def transport(url: str, headers: dict[str, str], body: bytes) -> tuple[int, float | None]:
        response = http.post(url, content=body, headers=headers)
        retry_after = response.headers.get("Retry-After")
        return response.status_code, float(retry_after) if retry_after else None

    dispatcher = TaskDispatcher(
        transport,
        secret=task_secret,
        target_base_url=f"http://127.0.0.1:{args.port}",
        max_attempts=get_settings().tasks_max_attempts,
        min_backoff=0.5,
        max_backoff=30,
    )
    dispatcher.start()
    write_samples(STATE / "samples")
    apps = load_function_apps(ROOT / "functions")
    dev_stores = DevStores(shop, woo, f"{stores['STORE_WEBHOOK_BASE_URL']}/webhooks/shopify")
    root_app = build_dev_app(issuer, dispatcher, STATE / "samples", mail, dev_stores)
    wsgi = DispatcherMiddleware(root_app, {f"/{name}": app for name, app in apps.items()})
    server = make_server("127.0.0.1", args.port, wsgi, threaded=True)

    print("\nEpox local platform is up.\n")
    for name in sorted(apps):
        print(f"  {name:<24} {base}/{name}/health")
    print(f"\n  Firestore emulator       {emulator.host}")
    print(f"  S3 (R2 stand-in)         {s3_endpoint}  bucket {BUCKET}")
    print(f"  task dispatcher          {base}/_dev/tasks")
    print(f"  API contract (OpenAPI)   {base}/_dev/openapi.json")
    print(f"  Stripe (local stub)      {stripe.stub.url}  pay a checkout: POST its url (or open it and press Pay)")
    print(f"  SMTP sink (email)        127.0.0.1:{args.smtp_port}  mails in .dev/mail/, listed at {base}/_dev/mail")
    print(f"  Shopify (local stub)     {shop.url}  shop {shop.shop}; webhooks: POST {base}/_dev/shopify/deliver")
    print(f"  WooCommerce (local stub) {woo.url}  connect it by this URL; edits: {base}/_dev/woocommerce/products")
    print("\nGet a dev token:")
    print(f"  curl -s -X POST {base}/_dev/token -H 'Content-Type: application/json' -d '{{\"client_id\":\"acme\"}}'")
    print(f'  curl -s {base}/catalog_api/products -H "Authorization: Bearer $TOKEN"')
    print("\nRun the demo against it:  make demo      Stop: Ctrl-C\n", flush=True)

    stopping = threading.Event()

    def stop(*_: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if args.demo:

        def run_demo() -> None:
            from dev.demo import run

            try:
                run(base)
            finally:
                stop()

        threading.Thread(target=run_demo, daemon=True).start()
    try:
        server.serve_forever()
    finally:
        print("stopping…", flush=True)
        dispatcher.stop()
        http.close()
        stripe.stop()
        stubs.close()
        mail.stop()
        s3.stop()
        emulator.stop()
        print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
