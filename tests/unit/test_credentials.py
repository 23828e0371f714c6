"""Store credentials at rest: envelope encryption with AES-256-GCM, the record's context bound as associated
data, key versions recorded so keys rotate, and Cloud KMS as the production key-encryption key."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.api_core import exceptions as google_errors
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.kms import KmsCipher, crc32c, credential_cipher
from shared.config import Settings
from shared.credentials import (
    CredentialKeyUnavailable,
    CredentialsUnreadable,
    LocalKeyring,
    SealedSecret,
)
from shared.errors import ConfigurationError, UpstreamUnavailable, VendorNotConfigured
from shared.needs import Need, required_variables

CONTEXT = "client/c1/store/s1"
SECRET = b'{"consumer_key": "ck_abc", "consumer_secret": "cs_def"}'
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))


def keyring(current: str = "v1", **keys: bytes) -> LocalKeyring:
    return LocalKeyring(keys or {"v1": KEY_1}, current)


def altered(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


# -- the local keyring -------------------------------------------------------------------------------------


def test_a_sealed_secret_opens_with_its_context() -> None:
    cipher = keyring()
    sealed = cipher.seal(SECRET, CONTEXT)
    assert (sealed.algorithm, sealed.key_name, sealed.key_version) == ("AES-256-GCM", "local", "v1")
    assert SECRET not in sealed.ciphertext
    assert cipher.open(sealed, CONTEXT) == SECRET


def test_every_seal_draws_a_new_data_key_and_nonce() -> None:
    cipher = keyring()
    one, two = cipher.seal(SECRET, CONTEXT), cipher.seal(SECRET, CONTEXT)
    assert one.nonce != two.nonce
    assert one.wrapped_key != two.wrapped_key
    assert one.ciphertext != two.ciphertext


def test_a_secret_moved_to_another_record_does_not_open() -> None:
    cipher = keyring()
    sealed = cipher.seal(SECRET, CONTEXT)
    with pytest.raises(CredentialsUnreadable):
        cipher.open(sealed, "client/c2/store/s1")
    other = cipher.seal(b"another store's keys", "client/c2/store/s2")
    # Even with the other record's data key beside it, the ciphertext stays bound to its own record.
    mixed = sealed.model_copy(update={"wrapped_key": other.wrapped_key})
    with pytest.raises(CredentialsUnreadable):
        cipher.open(mixed, CONTEXT)
    with pytest.raises(CredentialsUnreadable):
        cipher.open(mixed, "client/c2/store/s2")


@pytest.mark.parametrize("part", ["ciphertext", "nonce", "wrapped_key"])
def test_a_tampered_secret_does_not_open(part: str) -> None:
    cipher = keyring()
    sealed = cipher.seal(SECRET, CONTEXT)
    tampered = sealed.model_copy(update={part: altered(getattr(sealed, part))})
    with pytest.raises(CredentialsUnreadable) as caught:
        cipher.open(tampered, CONTEXT)
    assert caught.value.status == 409 and caught.value.code == "store_credentials_unreadable"


def test_a_truncated_secret_does_not_open() -> None:
    cipher = keyring()
    sealed = cipher.seal(SECRET, CONTEXT)
    with pytest.raises(CredentialsUnreadable):
        cipher.open(sealed.model_copy(update={"ciphertext": sealed.ciphertext[:-1]}), CONTEXT)
    with pytest.raises(CredentialsUnreadable):
        cipher.open(sealed.model_copy(update={"wrapped_key": sealed.wrapped_key[:5]}), CONTEXT)


def test_rotation_old_versions_open_and_the_newest_seals() -> None:
    old = keyring("v1", v1=KEY_1).seal(SECRET, CONTEXT)
    rotated = keyring("v2", v1=KEY_1, v2=KEY_2)
    assert rotated.open(old, CONTEXT) == SECRET
    new = rotated.seal(SECRET, CONTEXT)
    assert new.key_version == "v2"
    assert keyring("v2", v2=KEY_2).open(new, CONTEXT) == SECRET


def test_a_version_no_longer_configured_is_a_clear_error() -> None:
    old = keyring("v1", v1=KEY_1).seal(SECRET, CONTEXT)
    with pytest.raises(CredentialKeyUnavailable) as caught:
        keyring("v2", v2=KEY_2).open(old, CONTEXT)
    assert caught.value.status == 503
    assert "'v1'" in caught.value.detail and "STORE_CREDENTIAL_KEYS" in caught.value.detail
    assert caught.value.extensions == {"key_name": "local", "key_version": "v1"}


def test_a_secret_sealed_by_kms_is_not_opened_by_local_keys() -> None:
    kms = KmsCipher("projects/p/locations/global/keyRings/r/cryptoKeys/k", FakeKms())
    with pytest.raises(CredentialKeyUnavailable):
        keyring().open(kms.seal(SECRET, CONTEXT), CONTEXT)


def test_the_same_key_under_another_version_name_does_not_open() -> None:
    sealed = keyring("v1", v1=KEY_1).seal(SECRET, CONTEXT)
    renamed = sealed.model_copy(update={"key_version": "v2"})
    with pytest.raises(CredentialsUnreadable):
        keyring("v2", v1=KEY_1, v2=KEY_2).open(renamed, CONTEXT)


@given(plaintext=st.binary(max_size=2048), context=st.text(min_size=1, max_size=80))
def test_any_secret_round_trips(plaintext: bytes, context: str) -> None:
    cipher = keyring("v2", v1=KEY_1, v2=KEY_2)
    sealed = cipher.seal(plaintext, context)
    stored = SealedSecret.model_validate_json(sealed.model_dump_json())
    assert cipher.open(stored, context) == plaintext


def test_a_sealed_secret_needs_a_context() -> None:
    with pytest.raises(ValueError, match="context"):
        keyring().seal(SECRET, "")


def test_the_repr_shows_no_bytes() -> None:
    sealed = keyring().seal(SECRET, CONTEXT)
    for shown in (repr(sealed), str(sealed)):
        assert "key_version='v1'" in shown
        for part in (sealed.ciphertext, sealed.nonce, sealed.wrapped_key):
            assert repr(part) not in shown and base64.urlsafe_b64encode(part).decode() not in shown
        assert "ciphertext" not in shown and "wrapped_key" not in shown


def test_stored_as_bytes_and_carried_as_base64() -> None:
    sealed = keyring().seal(SECRET, CONTEXT)
    document = sealed.model_dump()
    assert isinstance(document["ciphertext"], bytes)  # Firestore keeps bytes as bytes
    carried = json.loads(sealed.model_dump_json())
    assert base64.urlsafe_b64decode(carried["ciphertext"]) == sealed.ciphertext  # pydantic: URL-safe base64
    assert SealedSecret.model_validate(document) == sealed


# -- the keys setting ----------------------------------------------------------------------------------


def test_keys_come_from_the_setting() -> None:
    v1, v2 = LocalKeyring.generate_key(), LocalKeyring.generate_key()
    cipher = LocalKeyring.from_setting(json.dumps({"v1": v1, "v2": v2}), "v2")
    assert cipher.current == "v2"
    assert cipher.seal(SECRET, CONTEXT).key_version == "v2"


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ("not json", "v1", "JSON object"),
        ("[]", "v1", "JSON object"),
        ("{}", "v1", "JSON object"),
        (json.dumps({"v1": "!!not base64!!"}), "v1", "JSON object"),
        (json.dumps({"v1": base64.b64encode(b"short").decode()}), "v1", "32 bytes"),
        (json.dumps({"v1": base64.b64encode(KEY_1).decode()}), "v9", "STORE_CREDENTIAL_KEY_VERSION"),
        (json.dumps({"v1": base64.b64encode(KEY_1).decode()}), "", "STORE_CREDENTIAL_KEY_VERSION"),
    ],
)
def test_a_bad_keys_setting_is_named_without_its_value(keys: str, current: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        LocalKeyring.from_setting(keys, current)
    assert base64.b64encode(KEY_1).decode() not in str(caught.value)


def test_the_deployment_chooses_kms_or_local_keys_or_answers_503() -> None:
    key = "projects/p/locations/global/keyRings/r/cryptoKeys/k"
    local = json.dumps({"v1": base64.b64encode(KEY_1).decode()})
    kms = credential_cipher(Settings(epox_env="test", store_credential_kms_key=key), kms_client=FakeKms())
    assert isinstance(kms, KmsCipher)
    chosen = credential_cipher(
        Settings(epox_env="test", store_credential_keys=local, store_credential_key_version="v1")  # type: ignore[arg-type]
    )
    assert isinstance(chosen, LocalKeyring)
    with pytest.raises(VendorNotConfigured) as caught:
        credential_cipher(Settings(epox_env="test"))
    assert caught.value.status == 503
    assert caught.value.extensions["settings"] == ["STORE_CREDENTIAL_KMS_KEY", "STORE_CREDENTIAL_KEYS"]


def test_production_demands_kms_and_refuses_local_keys() -> None:
    assert "STORE_CREDENTIAL_KMS_KEY" in required_variables({Need.STORE_CREDENTIALS})
    local = json.dumps({"v1": base64.b64encode(KEY_1).decode()})
    settings = Settings(epox_env="test", gcp_project="p", store_credential_keys=local)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as caught:
        settings.check_production({Need.STORE_CREDENTIALS})
    assert "STORE_CREDENTIAL_KMS_KEY" in str(caught.value)
    assert "STORE_CREDENTIAL_KEYS must be empty" in str(caught.value)
    assert local not in str(caught.value)


# -- Cloud KMS ------------------------------------------------------------------------------------------


@dataclass
class _Answer:
    """The fields of KMS's EncryptResponse / DecryptResponse the adapter reads."""

    name: str = ""
    ciphertext: bytes = b""
    ciphertext_crc32c: int = 0
    verified_plaintext_crc32c: bool = False
    verified_additional_authenticated_data_crc32c: bool = False
    plaintext: bytes = b""
    plaintext_crc32c: int = 0


class FakeKms:
    """Cloud KMS's symmetric encrypt/decrypt as documented: the primary version encrypts and its name is
    in the answer; decrypt on the CryptoKey finds the version in the ciphertext; other associated data
    or altered ciphertext is INVALID_ARGUMENT; a disabled version is FAILED_PRECONDITION."""

    def __init__(self) -> None:
        self.versions: dict[int, bytes] = {1: os.urandom(32)}
        self.primary = 1
        self.disabled: set[int] = set()
        self.damage_answers = False
        self.down = False
        self.requests: list[dict[str, Any]] = []

    def rotate(self) -> None:
        self.primary = max(self.versions) + 1
        self.versions[self.primary] = os.urandom(32)

    def encrypt(self, request: dict[str, Any], *, retry: Any, timeout: float) -> _Answer:
        assert 0 < timeout <= 30
        self.requests.append(request)
        if self.down:
            raise google_errors.ServiceUnavailable("unavailable")
        assert request["plaintext_crc32c"] == crc32c(request["plaintext"])
        nonce = os.urandom(12)
        body = AESGCM(self.versions[self.primary]).encrypt(
            nonce, request["plaintext"], request["additional_authenticated_data"]
        )
        ciphertext = self.primary.to_bytes(4, "big") + nonce + body
        return _Answer(
            name=f"{request['name']}/cryptoKeyVersions/{self.primary}",
            ciphertext=ciphertext,
            ciphertext_crc32c=crc32c(ciphertext) ^ (1 if self.damage_answers else 0),
            verified_plaintext_crc32c=True,
            verified_additional_authenticated_data_crc32c=True,
        )

    def decrypt(self, request: dict[str, Any], *, retry: Any, timeout: float) -> _Answer:
        assert 0 < timeout <= 30
        self.requests.append(request)
        if self.down:
            raise google_errors.ServiceUnavailable("unavailable")
        assert "/cryptoKeyVersions/" not in request["name"]
        ciphertext = request["ciphertext"]
        version = int.from_bytes(ciphertext[:4], "big")
        if version not in self.versions:
            raise google_errors.InvalidArgument("Decryption failed: the ciphertext is invalid.")
        if version in self.disabled:
            raise google_errors.FailedPrecondition(f"cryptoKeyVersions/{version} is not enabled")
        try:
            plaintext = AESGCM(self.versions[version]).decrypt(
                ciphertext[4:16], ciphertext[16:], request["additional_authenticated_data"]
            )
        except Exception:
            raise google_errors.InvalidArgument("Decryption failed: the ciphertext is invalid.") from None
        return _Answer(plaintext=plaintext, plaintext_crc32c=crc32c(plaintext) ^ (1 if self.damage_answers else 0))


KMS_KEY = "projects/epox/locations/europe-west1/keyRings/stores/cryptoKeys/credentials"


def test_kms_wraps_the_data_key_under_the_context() -> None:
    kms = FakeKms()
    cipher = KmsCipher(KMS_KEY, kms)
    sealed = cipher.seal(SECRET, CONTEXT)
    assert (sealed.key_name, sealed.key_version) == (KMS_KEY, KMS_KEY + "/cryptoKeyVersions/1")
    assert kms.requests[0]["additional_authenticated_data"] == CONTEXT.encode()
    assert cipher.open(sealed, CONTEXT) == SECRET
    with pytest.raises(CredentialsUnreadable):
        cipher.open(sealed, "client/c1/store/other")
    with pytest.raises(CredentialsUnreadable):
        cipher.open(sealed.model_copy(update={"wrapped_key": altered(sealed.wrapped_key[4:])}), CONTEXT)


def test_kms_rotation_keeps_old_secrets_readable() -> None:
    kms = FakeKms()
    cipher = KmsCipher(KMS_KEY, kms)
    old = cipher.seal(SECRET, CONTEXT)
    kms.rotate()
    new = cipher.seal(SECRET, CONTEXT)
    assert new.key_version.endswith("/cryptoKeyVersions/2")
    assert cipher.open(old, CONTEXT) == cipher.open(new, CONTEXT) == SECRET
    kms.disabled.add(1)
    with pytest.raises(CredentialKeyUnavailable, match="cryptoKeyVersions/1"):
        cipher.open(old, CONTEXT)


def test_kms_trouble_is_retryable_and_never_stored() -> None:
    kms = FakeKms()
    cipher = KmsCipher(KMS_KEY, kms)
    sealed = cipher.seal(SECRET, CONTEXT)
    kms.damage_answers = True
    with pytest.raises(UpstreamUnavailable):
        cipher.seal(SECRET, CONTEXT)
    with pytest.raises(UpstreamUnavailable):
        cipher.open(sealed, CONTEXT)
    kms.damage_answers, kms.down = False, True
    with pytest.raises(UpstreamUnavailable):
        cipher.seal(SECRET, CONTEXT)
    with pytest.raises(UpstreamUnavailable):
        cipher.open(sealed, CONTEXT)


def test_kms_needs_a_crypto_key_name() -> None:
    with pytest.raises(ConfigurationError, match="STORE_CREDENTIAL_KMS_KEY"):
        KmsCipher("projects/p/locations/l/keyRings/r", FakeKms())
    sealed = keyring().seal(SECRET, CONTEXT)
    with pytest.raises(CredentialKeyUnavailable):
        KmsCipher(KMS_KEY, FakeKms()).open(sealed, CONTEXT)


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0
