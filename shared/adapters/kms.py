"""Cloud KMS as the key-encryption key of store credentials, and the choice of cipher from the settings.

:class:`KmsCipher` wraps each connection's data key with ``encrypt`` on a symmetric CryptoKey and
unwraps it with ``decrypt`` (google-cloud-kms, imported on first use). KMS keeps the key versions
itself: ``encrypt`` uses the primary version and names it in its answer (stored as ``key_version``),
``decrypt`` on the CryptoKey finds the version from the ciphertext, so rotating the key in KMS needs
nothing here as long as the old versions stay enabled. The record's context is KMS's additional
authenticated data. Requests and answers carry CRC32C checksums, as Google asks of its clients, so a
key damaged in transit is refused instead of stored.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from shared.config import Settings
from shared.credentials import (
    CredentialCipher,
    CredentialKeyUnavailable,
    CredentialsUnreadable,
    EnvelopeCipher,
    LocalKeyring,
    SealedSecret,
    WrappedKey,
)
from shared.errors import ConfigurationError, UpstreamUnavailable, VendorNotConfigured

logger = logging.getLogger("epox.credentials")

CRYPTO_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


class KmsClient(Protocol):
    """What is used of ``google.cloud.kms.KeyManagementServiceClient``."""

    def encrypt(self, request: dict[str, Any], *, retry: Any, timeout: float) -> Any: ...

    def decrypt(self, request: dict[str, Any], *, retry: Any, timeout: float) -> Any: ...


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum KMS requests and answers carry (inputs here are tiny)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class KmsCipher(EnvelopeCipher):
    """Data keys wrapped by a Cloud KMS symmetric CryptoKey (``projects/…/cryptoKeys/…``)."""

    def __init__(self, crypto_key: str, client: KmsClient | None = None, *, timeout: float = 10.0) -> None:
        if not CRYPTO_KEY.match(crypto_key):
            raise ConfigurationError("STORE_CREDENTIAL_KMS_KEY must be projects/P/locations/L/keyRings/R/cryptoKeys/K")
        self.crypto_key = crypto_key
        self._client = client
        # The SDK's default retries run for about a minute; sealing happens inside WooCommerce's 60 s key
        # callback, so a call (its transient-error retries included) gives up after ``timeout``.
        self.timeout = timeout

    def _kms(self) -> KmsClient:
        if self._client is None:
            import google.cloud.kms as kms  # lazy: only functions that seal or open pay for the import

            self._client = kms.KeyManagementServiceClient()
        return self._client

    def _retry(self) -> Any:
        from google.api_core.retry import Retry

        return Retry(initial=0.2, maximum=2.0, multiplier=2.0, timeout=self.timeout)

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        try:
            answer = self._kms().encrypt(
                request={
                    "name": self.crypto_key,
                    "plaintext": data_key,
                    "plaintext_crc32c": crc32c(data_key),
                    "additional_authenticated_data": context,
                    "additional_authenticated_data_crc32c": crc32c(context),
                },
                retry=self._retry(),
                timeout=self.timeout,
            )
        except Exception as exc:  # gRPC/API errors: the secret is not sealed, the caller may retry
            logger.warning("Cloud KMS encrypt failed: %s", type(exc).__name__)
            raise UpstreamUnavailable("Cloud KMS could not protect the credentials; try again") from None
        intact = (
            answer.verified_plaintext_crc32c
            and answer.verified_additional_authenticated_data_crc32c
            and answer.ciphertext_crc32c == crc32c(answer.ciphertext)
        )
        if not intact:
            raise UpstreamUnavailable("Cloud KMS's answer was damaged in transit; try again")
        return WrappedKey(self.crypto_key, str(answer.name), bytes(answer.ciphertext))

    def unwrap(self, sealed: SealedSecret, context: bytes) -> bytes:
        if not CRYPTO_KEY.match(sealed.key_name):
            raise CredentialKeyUnavailable(f"key {sealed.key_name!r} is not a Cloud KMS key", key_name=sealed.key_name)
        from google.api_core import exceptions as google_errors

        try:
            answer = self._kms().decrypt(
                request={
                    # The CryptoKey, not the version: KMS reads the version from the ciphertext.
                    "name": sealed.key_name,
                    "ciphertext": sealed.wrapped_key,
                    "ciphertext_crc32c": crc32c(sealed.wrapped_key),
                    "additional_authenticated_data": context,
                    "additional_authenticated_data_crc32c": crc32c(context),
                },
                retry=self._retry(),
                timeout=self.timeout,
            )
        except google_errors.InvalidArgument:  # KMS's answer to altered ciphertext or other AAD
            raise CredentialsUnreadable() from None
        except (google_errors.NotFound, google_errors.PermissionDenied, google_errors.FailedPrecondition):
            # Deleted, disabled or not ours to use: a deployment problem, not the record's.
            raise CredentialKeyUnavailable(
                f"Cloud KMS refuses key {sealed.key_name!r} version {sealed.key_version!r}",
                key_name=sealed.key_name,
                key_version=sealed.key_version,
            ) from None
        except Exception as exc:
            logger.warning("Cloud KMS decrypt failed: %s", type(exc).__name__)
            raise UpstreamUnavailable("Cloud KMS could not open the credentials; try again") from None
        if answer.plaintext_crc32c != crc32c(answer.plaintext):
            raise UpstreamUnavailable("Cloud KMS's answer was damaged in transit; try again")
        return bytes(answer.plaintext)


def credential_cipher(settings: Settings, *, kms_client: KmsClient | None = None) -> CredentialCipher:
    """The cipher this deployment seals store credentials with: Cloud KMS when
    ``STORE_CREDENTIAL_KMS_KEY`` is set (production demands it), else the local keys of
    ``STORE_CREDENTIAL_KEYS``; neither: 503 ``vendor_not_configured``."""
    if settings.store_credential_kms_key:
        return KmsCipher(settings.store_credential_kms_key, kms_client)
    keys = settings.store_credential_keys.get_secret_value()
    if keys:
        return LocalKeyring.from_setting(keys, settings.store_credential_key_version)
    settings_named = ["STORE_CREDENTIAL_KMS_KEY", "STORE_CREDENTIAL_KEYS"]
    logger.error("store credential encryption is not configured: one of %s must be set", " or ".join(settings_named))
    raise VendorNotConfigured("Store credential encryption", settings_named)
