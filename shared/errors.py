"""The project's error model.

Every failure a caller can see is an :class:`EpoxError` with a stable ``code``; the HTTP layer turns
it into an RFC 9457 ``application/problem+json`` response. Adapters translate vendor exceptions into
these so domain code never handles a boto3, gRPC or httpx error directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import ValidationError


class EpoxError(Exception):
    """Base class: a problem with an HTTP status, a stable code and optional extension members."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, **extensions: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions
        self.headers: dict[str, str] = {}


class BadRequest(EpoxError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class MalformedJson(BadRequest):
    code = "malformed_json"
    title = "Malformed JSON body"


class ValidationFailed(EpoxError):
    """422 with ``errors``: a list of ``{"field": "a.b", "message": "...", "type": "..."}``."""

    status = 422
    code = "validation_failed"
    title = "The request is not valid"


class Unauthenticated(EpoxError):
    status = 401
    code = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, *, credentials_sent: bool = True, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        # RFC 6750: a request without credentials gets a bare challenge, a bad token an error code.
        self.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if credentials_sent else "Bearer"


class Forbidden(EpoxError):
    status = 403
    code = "forbidden"
    title = "Not allowed"


class NotFound(EpoxError):
    """Also what another tenant's id gets: never 403, so ids are not an oracle."""

    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(EpoxError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class Conflict(EpoxError):
    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    title = "Idempotency-Key was already used with a different request"


class IdempotencyRequestInProgress(Conflict):
    code = "idempotency_request_in_progress"
    title = "A request with this Idempotency-Key is still being processed"


class PayloadTooLarge(EpoxError):
    status = 413
    code = "payload_too_large"
    title = "Request body too large"


class UnsupportedMediaType(EpoxError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class UnprocessableContent(EpoxError):
    """Well-formed request whose content (an image, a CSV) cannot be used."""

    status = 422
    code = "unprocessable_content"
    title = "The content cannot be processed"


class InvalidImage(UnprocessableContent):
    code = "invalid_image"
    title = "The file is not a usable image"


class InsufficientCredits(EpoxError):
    status = 402
    code = "insufficient_credits"
    title = "Not enough credits"


class UpstreamUnavailable(EpoxError):
    """A dependency is busy or down; the caller should retry later."""

    status = 503
    code = "upstream_unavailable"
    title = "A dependency is temporarily unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 5, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.headers["Retry-After"] = str(retry_after)


class UpstreamRejectedCredentials(EpoxError):
    """A vendor refused our own credentials (a revoked or wrong API key): nothing the caller can fix,
    so it is a 502 for them and an error in the logs for the operator."""

    status = 502
    code = "upstream_rejected_credentials"
    title = "A provider refused our credentials"


class VendorNotConfigured(EpoxError):
    """A provider's credential or address is not set on this deployment (a development stack without
    a Stripe key, say): nothing the caller can fix, and not a crash either. Names the settings, never
    their values. Production refuses to start without them (``Settings.check_production``)."""

    status = 503
    code = "vendor_not_configured"
    title = "A provider is not configured on this deployment"

    def __init__(self, vendor: str, settings: list[str]) -> None:
        names = ", ".join(settings)
        super().__init__(
            f"{vendor} is not configured on this deployment: {names} not set", vendor=vendor, settings=settings
        )


class ConfigurationError(RuntimeError):
    """Raised at start-up when required settings are missing or unsafe; never caught by handlers."""


def validation_problem(exc: ValidationError, *, location: str = "body") -> ValidationFailed:
    """Translate pydantic's errors into a 422 with one entry per field."""
    errors = []
    for item in exc.errors(include_url=False, include_input=False):
        path = [str(part) for part in item.get("loc", ())]
        errors.append(
            {
                "field": ".".join(path) if path else location,
                "in": location,
                "message": item.get("msg", "invalid"),
                "type": item.get("type", "value_error"),
            }
        )
    noun = "field" if len(errors) == 1 else "fields"
    return ValidationFailed(f"{len(errors)} invalid {noun} in the request {location}", errors=errors)
