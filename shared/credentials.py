"""Store credentials encrypted at rest: envelope encryption behind the :class:`CredentialCipher` port.

Sealing draws a fresh 256-bit data key, encrypts the secret with it (AES-256-GCM, a 96-bit random
nonce) and wraps the data key with a key-encryption key: a local key from the settings
(:class:`LocalKeyring`, development and tests) or a Cloud KMS CryptoKey in production
(``shared.adapters.kms``). The :class:`SealedSecret` keeps the wrapped data key beside the ciphertext
with the name and version of the key that wrapped it, so keys rotate: a secret opens with the version it
records and new secrets are sealed with the newest.

``context`` names the record the secret belongs to (``client/{id}/store/{id}``) and is bound as
associated data to both the secret and its wrapped data key: a ciphertext copied into another record
does not open. Plaintexts, data keys and ciphertexts are never logged, and a SealedSecret's repr shows
only its key's name and version.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ConfigurationError, EpoxError

ALGORITHM: Literal["AES-256-GCM"] = "AES-256-GCM"
_NONCE_BYTES = 12
_KEY_BYTES = 32
LOCAL_KEY_NAME = "local"


class CredentialsUnreadable(EpoxError):
    """A sealed secret does not open: it was altered, or it belongs to another record. Nothing a retry
    fixes; the store has to be connected again."""

    status = 409
    code = "store_credentials_unreadable"
    title = "The store's saved credentials cannot be read; connect the store again"


class CredentialKeyUnavailable(EpoxError):
    """The key a secret was sealed with is not configured on this deployment (a retired version that
    was removed too early, or another deployment's key). Names the key, never key material."""

    status = 503
    code = "credential_key_unavailable"
    title = "The key that protects these credentials is not configured on this deployment"


class SealedSecret(BaseModel):
    """A secret at rest (Firestore stores the bytes as bytes; JSON carries them in URL-safe base64)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    algorithm: Literal["AES-256-GCM"] = ALGORITHM
    key_name: str  # "local", or the Cloud KMS CryptoKey's resource name
    key_version: str  # "v1"…, or the CryptoKeyVersion that wrapped the data key
    wrapped_key: bytes = Field(repr=False)
    nonce: bytes = Field(repr=False, min_length=_NONCE_BYTES, max_length=_NONCE_BYTES)
    ciphertext: bytes = Field(repr=False)  # with GCM's 16-byte tag


@dataclass(frozen=True)
class WrappedKey:
    key_name: str
    key_version: str
    wrapped: bytes


class CredentialCipher(ABC):
    """Port: seal secrets for storage and open them again."""

    @abstractmethod
    def seal(self, plaintext: bytes, context: str) -> SealedSecret: ...

    @abstractmethod
    def open(self, sealed: SealedSecret, context: str) -> bytes:
        """The plaintext; :class:`CredentialsUnreadable` if it was altered or belongs to another
        ``context``, :class:`CredentialKeyUnavailable` if its key is not configured here."""


class EnvelopeCipher(CredentialCipher):
    """The envelope around a key-encryption key; subclasses wrap and unwrap the data key."""

    @abstractmethod
    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey: ...

    @abstractmethod
    def unwrap(self, sealed: SealedSecret, context: bytes) -> bytes:
        """The data key of ``sealed``, or one of the two errors of :meth:`CredentialCipher.open`."""

    def seal(self, plaintext: bytes, context: str) -> SealedSecret:
        bound = _context(context)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, bound)
        wrapped = self.wrap(data_key, bound)
        return SealedSecret(
            key_name=wrapped.key_name,
            key_version=wrapped.key_version,
            wrapped_key=wrapped.wrapped,
            nonce=nonce,
            ciphertext=ciphertext,
        )

    def open(self, sealed: SealedSecret, context: str) -> bytes:
        bound = _context(context)
        data_key = self.unwrap(sealed, bound)
        if len(data_key) != _KEY_BYTES:
            raise CredentialsUnreadable()
        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, bound)
        except InvalidTag:
            raise CredentialsUnreadable() from None


class LocalKeyring(EnvelopeCipher):
    """Key-encryption keys from the settings (development and tests): versioned 32-byte AES keys;
    data keys are wrapped with AES-256-GCM (nonce ‖ ciphertext ‖ tag) under the context."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        for version, key in keys.items():
            if len(key) != _KEY_BYTES:
                raise ConfigurationError(f"STORE_CREDENTIAL_KEYS[{version!r}] must be 32 bytes (base64)")
        if current not in keys:
            raise ConfigurationError(
                f"STORE_CREDENTIAL_KEY_VERSION {current!r} is not one of STORE_CREDENTIAL_KEYS' versions"
            )
        self._keys = dict(keys)
        self.current = current

    @classmethod
    def from_setting(cls, keys_json: str, current: str) -> LocalKeyring:
        """From ``STORE_CREDENTIAL_KEYS`` (JSON ``{"v1": base64, …}``) and ``STORE_CREDENTIAL_KEY_VERSION``."""
        try:
            raw = json.loads(keys_json)
            if not isinstance(raw, dict) or not raw:
                raise ValueError("not a JSON object of versions")
            keys = {str(version): base64.b64decode(str(value), validate=True) for version, value in raw.items()}
        except (ValueError, binascii.Error):
            # The message names the setting only: its value is key material.
            raise ConfigurationError(
                'STORE_CREDENTIAL_KEYS must be a JSON object {"v1": "<base64 of 32 bytes>", …}'
            ) from None
        return cls(keys, current)

    @staticmethod
    def generate_key() -> str:
        """A new key for STORE_CREDENTIAL_KEYS, base64."""
        return base64.b64encode(os.urandom(_KEY_BYTES)).decode()

    def wrap(self, data_key: bytes, context: bytes) -> WrappedKey:
        nonce = os.urandom(_NONCE_BYTES)
        wrapped = nonce + AESGCM(self._keys[self.current]).encrypt(nonce, data_key, context)
        return WrappedKey(LOCAL_KEY_NAME, self.current, wrapped)

    def unwrap(self, sealed: SealedSecret, context: bytes) -> bytes:
        key = self._keys.get(sealed.key_version) if sealed.key_name == LOCAL_KEY_NAME else None
        if key is None:
            raise CredentialKeyUnavailable(
                f"key {sealed.key_name!r} version {sealed.key_version!r} is not in STORE_CREDENTIAL_KEYS",
                key_name=sealed.key_name,
                key_version=sealed.key_version,
            )
        nonce, body = sealed.wrapped_key[:_NONCE_BYTES], sealed.wrapped_key[_NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, body, context)
        except (InvalidTag, ValueError):
            raise CredentialsUnreadable() from None


def _context(context: str) -> bytes:
    if not context:
        raise ValueError("a sealed secret needs the context of its record")
    return context.encode()
