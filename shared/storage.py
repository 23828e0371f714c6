"""Object storage port and its Cloudflare R2 adapter (S3 API through boto3).

Locally and in tests the same adapter talks to a moto server; only the endpoint differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import require_vendor_settings
from shared.errors import EpoxError, UpstreamUnavailable

if TYPE_CHECKING:
    from shared.config import Settings


class ObjectNotFound(EpoxError):
    status = 404
    code = "object_not_found"
    title = "Stored object not found"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    etag: str


@dataclass(frozen=True)
class PresignedUpload:
    """What the browser needs to upload directly: PUT ``url`` with exactly these headers."""

    url: str
    method: str
    headers: dict[str, str]
    expires_in: int


@dataclass(frozen=True)
class UploadedPart:
    """One part of a multipart upload as the store acknowledged it (1-based ``number``)."""

    number: int
    etag: str


# What S3 and R2 require of every part of a multipart upload but the last.
MIN_PART_BYTES = 5 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


class ObjectStore(ABC):
    """Port for blobs: images, thumbnails, uploads, reports."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None: ...

    @abstractmethod
    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Read an object; raise :class:`ObjectNotFound` when missing."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    @abstractmethod
    def presigned_get(self, key: str, *, expires_in: int, download_name: str | None = None) -> str: ...

    @abstractmethod
    def presigned_put(
        self, key: str, *, content_type: str, content_length: int, expires_in: int
    ) -> PresignedUpload: ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete objects; missing ones are not an error (adapters delete in batches)."""
        for key in keys:
            self.delete(key)

    # -- streaming: objects larger than memory ---------------------------------------------------

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Read an object piece by piece, never whole; :class:`ObjectNotFound` when missing."""

    @abstractmethod
    def start_multipart(self, key: str, content_type: str) -> str:
        """Begin a multipart upload to ``key``; returns its upload id."""

    @abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        """Upload part ``number`` (1..10,000; at least :data:`MIN_PART_BYTES` unless it is the last).
        Uploading a number again replaces that part."""

    @abstractmethod
    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        """Join ``parts`` (in number order) into the object at ``key``."""

    @abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts; an upload that is gone (finished, aborted) is not an error."""


class R2ObjectStore(ObjectStore):
    """boto3 S3 client against R2 (or any S3-compatible endpoint)."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        access_key_id: str,
        secret_access_key: str,
        bucket: str,
        region: str = "auto",
        public_endpoint_url: str | None = None,
    ) -> None:
        self.bucket = bucket
        self._config = {
            "endpoint_url": endpoint_url,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "region_name": region,
        }
        # Browsers may reach the store under another host name than the functions do.
        self._public_endpoint = public_endpoint_url or endpoint_url
        self._client: Any = None
        self._signer: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> R2ObjectStore:
        return cls(
            endpoint_url=settings.r2_endpoint_url,
            access_key_id=settings.r2_access_key_id,
            secret_access_key=settings.r2_secret_access_key.get_secret_value(),
            bucket=settings.r2_bucket,
            region=settings.r2_region,
            public_endpoint_url=settings.r2_public_endpoint_url or None,
        )

    def _make(self, endpoint: str) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        return boto3.client("s3", config=config, **{**self._config, "endpoint_url": endpoint})

    def _require_settings(self) -> None:
        # Without them boto3 would go looking for AWS credentials and AWS's own endpoint.
        require_vendor_settings(
            "The object store (R2)",
            {
                "R2_ENDPOINT_URL": str(self._config["endpoint_url"]),
                "R2_ACCESS_KEY_ID": str(self._config["aws_access_key_id"]),
                "R2_SECRET_ACCESS_KEY": str(self._config["aws_secret_access_key"]),
                "R2_BUCKET": self.bucket,
            },
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._require_settings()
            self._client = self._make(str(self._config["endpoint_url"]))
        return self._client

    @property
    def signer(self) -> Any:
        if self._signer is None:
            client = self.client  # built first: it checks the settings
            same = self._public_endpoint == self._config["endpoint_url"]
            self._signer = client if same else self._make(self._public_endpoint)
        return self._signer

    def _translate(self, exc: Exception, key: str) -> EpoxError:
        from botocore.exceptions import ClientError

        if isinstance(exc, EpoxError):  # ours already (a store that is not configured)
            return exc

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(f"No object at {key}")
        return UpstreamUnavailable("The object store is unavailable")

    def put(self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None) -> None:
        extra = {"CacheControl": cache_control} if cache_control else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **extra)
        except Exception as exc:
            raise self._translate(exc, key) from exc

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            data: bytes = body.read(max_bytes + 1) if max_bytes is not None else body.read()
            body.close()
            return data
        except Exception as exc:
            raise self._translate(exc, key) from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            error = self._translate(exc, key)
            if isinstance(error, ObjectNotFound):
                return None
            raise error from exc
        return ObjectInfo(
            key=key,
            size=int(response.get("ContentLength", 0)),
            content_type=str(response.get("ContentType", "")),
            etag=str(response.get("ETag", "")).strip('"'),
        )

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            error = self._translate(exc, key)
            if not isinstance(error, ObjectNotFound):
                raise error from exc

    def presigned_get(self, key: str, *, expires_in: int, download_name: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if download_name:
            safe = "".join(ch for ch in download_name if ch.isalnum() or ch in "._- ")[:120] or "download"
            params["ResponseContentDisposition"] = f'attachment; filename="{safe}"'
        url: str = self.signer.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        return url

    def presigned_put(self, key: str, *, content_type: str, content_length: int, expires_in: int) -> PresignedUpload:
        # Content-Type and Content-Length are signed headers: R2 rejects an upload that differs.
        url: str = self.signer.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": content_length},
            ExpiresIn=expires_in,
        )
        return PresignedUpload(
            url=url,
            method="PUT",
            headers={"Content-Type": content_type, "Content-Length": str(content_length)},
            expires_in=expires_in,
        )

    def delete_many(self, keys: Sequence[str]) -> None:
        unique = sorted(set(keys))
        for start in range(0, len(unique), 1000):  # DeleteObjects takes up to 1,000 keys
            batch = unique[start : start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
                )
            except Exception as exc:
                raise self._translate(exc, batch[0]) from exc
            failed = [error for error in response.get("Errors", []) if error.get("Code") != "NoSuchKey"]
            if failed:
                raise UpstreamUnavailable(f"The object store did not delete {len(failed)} objects")

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:
            raise self._translate(exc, key) from exc
        try:
            while True:
                try:
                    chunk: bytes = body.read(chunk_size)
                except Exception as exc:
                    raise self._translate(exc, key) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    def start_multipart(self, key: str, content_type: str) -> str:
        try:
            response = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return str(response["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        try:
            response = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return UploadedPart(number=number, etag=str(response["ETag"]))

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        ordered = sorted(parts, key=lambda part: part.number)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in ordered]},
            )
        except Exception as exc:
            raise self._translate(exc, key) from exc

    def abort_multipart(self, key: str, upload_id: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchUpload", "404", "NotFound"):
                return
            raise self._translate(exc, key) from exc
        except Exception as exc:
            raise self._translate(exc, key) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (local stack and tests only; production buckets come from Terraform)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
