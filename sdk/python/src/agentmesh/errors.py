"""Errors of the local API, one exception class per error code.

Every error the node answers is JSON with a stable code::

    {"error": {"code": "rejected", "message": "...", "reason": "blocked"}}

:func:`error_from_body` turns it into an instance of the class registered for
its code (:class:`Rejected` here), a subclass of :class:`AgentMeshError`.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

__all__ = [
    "AgentMeshError",
    "BadHost",
    "BadRequest",
    "BadResponse",
    "BinaryNotFound",
    "Busy",
    "CardExpired",
    "CircuitOpen",
    "DeliveryTimeout",
    "ForbiddenOrigin",
    "InternalError",
    "InvalidAmid",
    "InvalidCard",
    "InvalidId",
    "InvalidName",
    "InvalidPayload",
    "InvalidRecipient",
    "Killed",
    "MethodNotAllowed",
    "NoSession",
    "NodeNotRunning",
    "NodeStartFailed",
    "NotAcknowledged",
    "NotFound",
    "PayloadTooLarge",
    "Rejected",
    "ReplyTimeout",
    "StorageError",
    "Stopped",
    "Unauthorized",
    "Unreachable",
    "error_class",
    "error_from_body",
]


class AgentMeshError(Exception):
    """Base of every error of this package.

    ``code`` is the API's stable error code (``"rejected"``, ``"not_found"``,
    ...), ``message`` its human-readable text and ``status`` the HTTP status
    (``None`` when the node did not answer at all).
    """

    #: The code this class stands for (the base class stands for any).
    CODE: ClassVar[str] = ""
    #: The HTTP status the API answers this code with.
    STATUS: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else (self.CODE or "unknown")
        self.status = status if status is not None else self.STATUS
        #: The whole ``error`` object as the node sent it (empty if none).
        self.body: dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class NodeNotRunning(AgentMeshError):
    """No node to talk to: ``api.json`` is missing, or the node does not answer."""

    CODE = "node_not_running"


class BinaryNotFound(AgentMeshError):
    """An AgentMesh binary (``agentmesh`` or ``agentmesh-sim``) cannot be found."""

    CODE = "binary_not_found"


class NodeStartFailed(AgentMeshError):
    """A node process this package started exited, or did not get ready in time."""

    CODE = "start_failed"


class BadResponse(AgentMeshError):
    """The node answered something this SDK cannot read."""

    CODE = "bad_response"


_REGISTRY: dict[str, type[AgentMeshError]] = {}


def _register(cls: type[AgentMeshError]) -> type[AgentMeshError]:
    _REGISTRY[cls.CODE] = cls
    return cls


@_register
class Unauthorized(AgentMeshError):
    """401: missing or wrong token."""

    CODE = "unauthorized"
    STATUS = 401


@_register
class ForbiddenOrigin(AgentMeshError):
    """403: the request carried an ``Origin`` or ``Referer`` header (a browser page)."""

    CODE = "forbidden_origin"
    STATUS = 403


@_register
class BadHost(AgentMeshError):
    """403: the ``Host`` header is not loopback (DNS rebinding)."""

    CODE = "bad_host"
    STATUS = 403


@_register
class BadRequest(AgentMeshError):
    """400: malformed JSON, missing or wrong fields."""

    CODE = "bad_request"
    STATUS = 400


@_register
class InvalidAmid(AgentMeshError):
    """400: an AMID that does not parse."""

    CODE = "invalid_amid"
    STATUS = 400


@_register
class InvalidId(AgentMeshError):
    """400: a message or session id that is not 32 hex digits."""

    CODE = "invalid_id"
    STATUS = 400


@_register
class PayloadTooLarge(AgentMeshError):
    """413: the request body is over 1 MiB."""

    CODE = "payload_too_large"
    STATUS = 413


@_register
class NotFound(AgentMeshError):
    """404: no such route, no card for the AMID, no such message."""

    CODE = "not_found"
    STATUS = 404


@_register
class MethodNotAllowed(AgentMeshError):
    """405: wrong method for the route."""

    CODE = "method_not_allowed"
    STATUS = 405


@_register
class Rejected(AgentMeshError):
    """403: the recipient refused; ``reason`` is the KNOCK reject reason
    (``"blocked"``, ``"intent_denied"``, ``"not_allowed"``, ...; for message
    schemas ``"unsupported_schema"``: the KNOCK named no schema, or one the
    recipient does not take for the capability, and ``"schema_invalid"``: the
    recipient's schema refused the payload)."""

    CODE = "rejected"
    STATUS = 403

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, body=body)
        if reason is None and body is not None and isinstance(body.get("reason"), str):
            reason = body["reason"]
        self.reason: str | None = reason


@_register
class InvalidPayload(AgentMeshError):
    """400: the payload is too large for one message, not encodable, or does
    not conform to the message schema named (when this node knows it: checked
    before anything is sent)."""

    CODE = "invalid_payload"
    STATUS = 400


@_register
class InvalidRecipient(AgentMeshError):
    """400: the AMID holds no usable key."""

    CODE = "invalid_recipient"
    STATUS = 400


@_register
class InvalidCard(AgentMeshError):
    """400: a card that does not verify: malformed, forged, or not a card."""

    CODE = "invalid_card"
    STATUS = 400


@_register
class CardExpired(AgentMeshError):
    """400: a card whose signed expiry has passed (ask its agent for a fresh one)."""

    CODE = "card_expired"
    STATUS = 400


@_register
class InvalidName(AgentMeshError):
    """400: a petname that is not valid, or could be read as an AMID."""

    CODE = "invalid_name"
    STATUS = 400


@_register
class NoSession(AgentMeshError):
    """409: nothing to close or reply in."""

    CODE = "no_session"
    STATUS = 409


@_register
class DeliveryTimeout(AgentMeshError):
    """504: not delivered (or deposited in a mailbox) in time."""

    CODE = "delivery_timeout"
    STATUS = 504


@_register
class NotAcknowledged(AgentMeshError):
    """504: written, but not acknowledged in time."""

    CODE = "not_acknowledged"
    STATUS = 504


@_register
class ReplyTimeout(AgentMeshError):
    """504: a request's reply did not come in time."""

    CODE = "reply_timeout"
    STATUS = 504


@_register
class Unreachable(AgentMeshError):
    """502: no path to the recipient, and no relay took the envelope."""

    CODE = "unreachable"
    STATUS = 502


@_register
class CircuitOpen(AgentMeshError):
    """503: too many recent failures with this peer; retry after ``retry_after_ms``."""

    CODE = "circuit_open"
    STATUS = 503

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: dict[str, Any] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, body=body)
        if retry_after_ms is None and body is not None:
            value = body.get("retry_after_ms")
            if isinstance(value, int) and not isinstance(value, bool):
                retry_after_ms = value
        self.retry_after_ms: int | None = retry_after_ms

    @property
    def retry_after(self) -> float | None:
        """``retry_after_ms`` in seconds."""
        return None if self.retry_after_ms is None else self.retry_after_ms / 1000


@_register
class Busy(AgentMeshError):
    """503: too many requests are waiting for replies."""

    CODE = "busy"
    STATUS = 503


@_register
class Killed(AgentMeshError):
    """503: the owner's kill switch is on."""

    CODE = "killed"
    STATUS = 503


@_register
class Stopped(AgentMeshError):
    """503: the node is stopping."""

    CODE = "stopped"
    STATUS = 503


@_register
class StorageError(AgentMeshError):
    """500: the node's own storage failed (code ``storage``)."""

    CODE = "storage"
    STATUS = 500


@_register
class InternalError(AgentMeshError):
    """500: anything else (code ``internal``)."""

    CODE = "internal"
    STATUS = 500


def error_class(code: str) -> type[AgentMeshError]:
    """The exception class of an error code (:class:`AgentMeshError` if unknown)."""
    return _REGISTRY.get(code, AgentMeshError)


def error_from_body(status: int, body: bytes | str | Any) -> AgentMeshError:
    """The exception for an error answer: HTTP ``status`` and its body (raw
    bytes or text, or already decoded JSON)."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        text = text.strip()[:200] or "no error body"
        return AgentMeshError(f"HTTP {status}: {text}", code=f"http_{status}", status=status)
    code: str = err["code"]
    message = err.get("message")
    if not isinstance(message, str):
        message = code
    return error_class(code)(message, code=code, status=status, body=err)
