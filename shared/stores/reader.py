"""Reading the connected store for the API: its categories, a search, one product — either platform."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from shared.stores.connections import live_connection, open_secrets, shopify_token, watching_authorization, woo_keys
from shared.stores.imports import StoreServices
from shared.stores.models import StoreConnectionDoc
from shared.stores.ports import StoreCategory, StorePlatform, StoreProduct

SEARCH_LIMIT = 20


@dataclass
class StoreReader:
    services: StoreServices
    connection: StoreConnectionDoc
    clock: Callable[[], datetime]

    @classmethod
    def for_client(cls, services: StoreServices, client_id: str, clock: Callable[[], datetime]) -> StoreReader:
        """A reader of the client's live store (409 without one)."""
        return cls(services, live_connection(services.stores, client_id), clock)

    def _watch(self) -> AbstractContextManager[None]:
        return watching_authorization(self.services.stores, self.connection.client_id, self.clock)

    def categories(self) -> list[StoreCategory]:
        """Shopify collections or WooCommerce categories, with their product counts."""
        with self._watch():
            return self._categories()

    def search(self, text: str) -> list[StoreProduct]:
        """Products whose title or SKU matches ``text`` (the store's own search)."""
        with self._watch():
            return self._search(text)

    def product(self, store_product_id: str) -> StoreProduct | None:
        """One store product, or None when the store has no such product."""
        with self._watch():
            return self._product(store_product_id)

    def _shopify_token(self) -> str:
        _, token = shopify_token(
            self.services.stores,
            self.services.shopify(),
            self.services.cipher,
            self.connection.client_id,
            self.services.policy,
            self.clock,
        )
        return token

    def _categories(self) -> list[StoreCategory]:
        if self.connection.platform is StorePlatform.SHOPIFY:
            return self.services.shopify().collections(self.connection.shop, self._shopify_token())
        keys = woo_keys(open_secrets(self.services.cipher, self.connection))
        return self.services.woocommerce().categories(self.connection.shop, keys)

    def _search(self, text: str) -> list[StoreProduct]:
        if self.connection.platform is StorePlatform.SHOPIFY:
            escaped = text.replace("\\", "\\\\").replace('"', '\\"')
            # A quoted phrase searches Shopify's default fields (title, SKU, vendor, type, tags) as one term.
            query = f'"{escaped}"'
            page = self.services.shopify().products_page(
                self.connection.shop, self._shopify_token(), query=query, first=SEARCH_LIMIT
            )
            return page.products
        keys = woo_keys(open_secrets(self.services.cipher, self.connection))
        return (
            self.services.woocommerce()
            .products_page(self.connection.shop, keys, search=text, per_page=SEARCH_LIMIT)
            .products
        )

    def _product(self, store_product_id: str) -> StoreProduct | None:
        if self.connection.platform is StorePlatform.SHOPIFY:
            found = self.services.shopify().products_by_ids(
                self.connection.shop, self._shopify_token(), [store_product_id]
            )
        else:
            keys = woo_keys(open_secrets(self.services.cipher, self.connection))
            found = (
                self.services.woocommerce()
                .products_page(self.connection.shop, keys, include=[store_product_id], per_page=1)
                .products
            )
        return next((product for product in found if product.id == store_product_id), None)
