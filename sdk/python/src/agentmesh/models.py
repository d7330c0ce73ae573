"""What the local API answers, as dataclasses."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import BadResponse, NodeNotRunning

if TYPE_CHECKING:
    from .client import AsyncClient, Client

__all__ = [
    "API_FILE",
    "PATH_KINDS",
    "STANDARD_SCHEMAS",
    "ApiInfo",
    "DashboardLink",
    "Event",
    "EventBatch",
    "JSON",
    "Message",
    "Peer",
    "PolicyCheck",
    "Receipt",
    "SchemaCatalog",
    "StreamResult",
    "card_schemas",
    "default_data_dir",
]

#: A JSON object as decoded by :mod:`json`.
JSON = dict[str, Any]

#: Name of the file a running node writes in its data directory.
API_FILE = "api.json"


def default_data_dir() -> Path:
    """The data directory the ``agentmesh`` command uses: ``$AGENTMESH_HOME``,
    else ``~/.agentmesh``."""
    home = os.environ.get("AGENTMESH_HOME")
    return Path(home) if home else Path.home() / ".agentmesh"


def _str(d: Mapping[str, Any], key: str, what: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise BadResponse(f"{what}: {key!r} is missing or not a string")
    return v


def _int(d: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadResponse(f"{what}: {key!r} is missing or not an integer")
    return v


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


#: The path kinds a receipt or a message names, as the API spells them.
PATH_KINDS = ("direct_quic", "direct_tcp", "direct_web_rtc", "relayed", "mailbox", "other")


def _object(v: Any, what: str) -> JSON:
    if not isinstance(v, dict):
        raise BadResponse(f"{what}: expected a JSON object")
    return v


@dataclass(frozen=True)
class ApiInfo:
    """The contents of ``api.json``: where the node's local API listens and
    the token it wants. ``url`` is ``None`` when the node serves its API on
    its Unix socket only."""

    url: str | None
    token: str
    socket: str | None = None
    amid: str | None = None
    version: int = 1
    #: The data directory the file was read from, if any.
    data_dir: Path | None = None
    #: Base URL of the node's A2A gateway, when it serves one (``--a2a``).
    a2a: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], data_dir: Path | None = None) -> ApiInfo:
        what = API_FILE
        url = data.get("url")
        a2a = data.get("a2a")
        if url is None and not isinstance(data.get("socket"), str):
            raise BadResponse(f"{what}: neither 'url' nor 'socket'")
        version = data.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadResponse(f"{what}: 'version' is not an integer")
        return cls(
            url=url.rstrip("/") if isinstance(url, str) else None,
            token=_str(data, "token", what),
            socket=_opt_str(data, "socket"),
            amid=_opt_str(data, "amid"),
            version=version,
            data_dir=data_dir,
            a2a=a2a.rstrip("/") if isinstance(a2a, str) else None,
        )

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str] | None = None) -> ApiInfo:
        """Reads ``api.json`` from ``data_dir`` (default: :func:`default_data_dir`).

        Raises :class:`NodeNotRunning` when the file is missing (no node runs
        there) and :class:`BadResponse` when it does not parse.
        """
        d = Path(data_dir) if data_dir is not None else default_data_dir()
        path = d / API_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NodeNotRunning(
                f"no {API_FILE} in {d}: no node is running with this data directory"
            ) from None
        except OSError as e:
            raise NodeNotRunning(f"cannot read {path}: {e}") from e
        try:
            data = json.loads(text)
        except ValueError as e:
            # A file caught while being written reads as truncated JSON.
            raise BadResponse(f"{path} is not JSON: {e}") from e
        return cls.from_json(_object(data, str(path)), data_dir=d)


@dataclass(frozen=True)
class Receipt:
    """Proof that a message reached its recipient (or a relay mailbox)."""

    id: str
    to: str
    #: One of :data:`PATH_KINDS`: ``direct_quic``, ``direct_tcp``,
    #: ``direct_web_rtc``, ``relayed``, ``mailbox`` (deposited at a relay
    #: for a recipient that is offline) or ``other``.
    path: str
    #: Whether the message rode in a KNOCK (opened the session).
    knocked: bool
    session: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Receipt:
        what = "receipt"
        return cls(
            id=_str(d, "id", what),
            to=_str(d, "to", what),
            path=_str(d, "path", what),
            knocked=bool(d.get("knocked", False)),
            session=_str(d, "session", what),
        )


@dataclass
class Message:
    """A received message.

    ``from_`` is the sender's AMID (``from`` in JSON). ``kind`` is
    ``message``, ``request`` or ``reply``; ``reply_to`` names the message a
    reply answers. ``deliveries`` counts how many times the node handed the
    message out (more than one when an earlier reader did not acknowledge it).
    """

    id: str
    from_: str
    session: str
    seq: int
    ts_ms: int
    payload: Any
    path: str
    kind: str = "message"
    reply_to: str | None = None
    deliveries: int = 1
    #: The client the message was read with (to reply, ack, release). Not a
    #: dataclass field: ``dataclasses.asdict(msg)`` holds only the message.
    _client: ClassVar[Client | AsyncClient | None] = None

    def bind(self, client: Client | AsyncClient | None) -> Message:
        """Ties the message to the client that :meth:`reply`, :meth:`ack`
        and :meth:`release` use; returns it."""
        object.__setattr__(self, "_client", client)
        return self

    @classmethod
    def from_json(cls, d: Mapping[str, Any], client: Client | AsyncClient | None = None) -> Message:
        what = "message"
        return cls(
            id=_str(d, "id", what),
            from_=_str(d, "from", what),
            session=_str(d, "session", what),
            seq=_int(d, "seq", what, 0),
            ts_ms=_int(d, "ts_ms", what, 0),
            payload=d.get("payload"),
            path=_opt_str(d, "path") or "other",
            kind=_opt_str(d, "kind") or "message",
            reply_to=_opt_str(d, "reply_to"),
            deliveries=_int(d, "deliveries", what, 1),
        ).bind(client)

    def to_json(self) -> JSON:
        """The message as the API writes it (``from``, not ``from_``)."""
        d: JSON = {
            "id": self.id,
            "from": self.from_,
            "session": self.session,
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "payload": self.payload,
            "path": self.path,
            "kind": self.kind,
            "deliveries": self.deliveries,
        }
        if self.reply_to is not None:
            d["reply_to"] = self.reply_to
        return d

    @property
    def sender(self) -> str:
        """The sender's AMID (same as ``from_``)."""
        return self.from_

    @property
    def text(self) -> str | None:
        """``payload["text"]`` when the payload is an object with a text."""
        if isinstance(self.payload, dict):
            t = self.payload.get("text")
            return t if isinstance(t, str) else None
        return None

    @property
    def is_request(self) -> bool:
        """Whether the sender waits for a reply (``kind == "request"``)."""
        return self.kind == "request"

    def _sync_client(self) -> Client:
        from .client import Client

        if not isinstance(self._client, Client):
            raise TypeError(
                "this message did not come from a sync Client; "
                "use `await msg.areply(...)` / the client's methods"
            )
        return self._client

    def _async_client(self) -> AsyncClient:
        from .client import AsyncClient

        if not isinstance(self._client, AsyncClient):
            raise TypeError("this message did not come from an AsyncClient; use msg.reply(...)")
        return self._client

    def reply(self, payload: Any, *, same_session: bool = False) -> Receipt:
        """Answers this message (``POST /v1/reply``). A plain string is sent
        as ``{"text": ...}``. With ``same_session``, the reply goes in this
        message's session only and fails (:class:`NoSession`) when it ended."""
        return self._sync_client().reply(
            self.from_, self.id, payload, session=self.session if same_session else None
        )

    async def areply(self, payload: Any, *, same_session: bool = False) -> Receipt:
        """:meth:`reply` for messages read with an :class:`AsyncClient`."""
        return await self._async_client().reply(
            self.from_, self.id, payload, session=self.session if same_session else None
        )

    def ack(self) -> int:
        """Acknowledges this message: the node forgets it."""
        return self._sync_client().ack([self.id])

    def release(self) -> int:
        """Hands this message out again at once (to the next reader)."""
        return self._sync_client().release([self.id])


@dataclass(frozen=True)
class Event:
    """A node event with its id: ``event`` is the object ``agentmesh run
    --json`` prints (``{"event": "delivered", ...}``)."""

    id: int
    ts_ms: int
    event: JSON

    @property
    def kind(self) -> str:
        """The event's name (``delivered``, ``knock_decided``, ...)."""
        k = self.event.get("event")
        return k if isinstance(k, str) else ""

    def __getitem__(self, key: str) -> Any:
        return self.event[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.event.get(key, default)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        what = "event"
        inner = d.get("event")
        return cls(
            id=_int(d, "id", what),
            ts_ms=_int(d, "ts_ms", what, 0),
            event=inner if isinstance(inner, dict) else {"event": inner},
        )


@dataclass(frozen=True)
class EventBatch:
    """One answer of ``GET /v1/events``. ``dropped`` counts events after
    ``since`` the node no longer keeps (a gap)."""

    events: list[Event]
    last_id: int
    dropped: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EventBatch:
        raw = d.get("events")
        if not isinstance(raw, list):
            raise BadResponse("events: 'events' is missing")
        events = [Event.from_json(_object(e, "event")) for e in raw]
        last = d.get("last_id")
        if isinstance(last, bool) or not isinstance(last, int):
            last = events[-1].id if events else 0
        dropped = d.get("dropped", 0)
        if isinstance(dropped, bool) or not isinstance(dropped, int):
            dropped = 0
        return cls(events=events, last_id=last, dropped=dropped)


@dataclass(frozen=True)
class Peer:
    """An agent the node knows (``GET /v1/peers``): through a session, an
    imported card, a petname or a connection.

    ``path`` is the path of the open connection (``direct_quic``,
    ``relayed``, ...) or ``None``; ``presence`` comes from the freshest card
    the node holds of it; ``last_seen_ms`` is when it last connected, wrote
    or acknowledged (ms since the epoch, ``None`` when not since the node
    started); ``name`` is the local petname. ``session_type``
    (``conversation``, ``request_response``, ``stream``) and
    ``session_since_ms`` describe the newest session with it;
    ``messages_sent`` and ``messages_received`` count messages each way
    since the node started (one left in a mailbox counts once); ``blocked``
    is true when its KNOCKs are refused (killed, blocked or by the policy)."""

    amid: str
    path: str | None = None
    sessions: int = 0
    name: str | None = None
    presence: str | None = None
    last_seen_ms: int | None = None
    card_imported: bool = False
    card_expires_ms: int | None = None
    session_expires_ms: int | None = None
    session_type: str | None = None
    session_since_ms: int | None = None
    messages_sent: int = 0
    messages_received: int = 0
    blocked: bool = False
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Peer:
        sessions = d.get("sessions", 0)
        if isinstance(sessions, list):
            sessions = len(sessions)

        def opt_int(key: str) -> int | None:
            v = d.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        return cls(
            amid=_str(d, "amid", "peer"),
            path=_opt_str(d, "path"),
            sessions=sessions if isinstance(sessions, int) else 0,
            name=_opt_str(d, "name"),
            presence=_opt_str(d, "presence"),
            last_seen_ms=opt_int("last_seen_ms"),
            card_imported=d.get("card_imported") is True,
            card_expires_ms=opt_int("card_expires_ms"),
            session_expires_ms=opt_int("session_expires_ms"),
            session_type=_opt_str(d, "session_type"),
            session_since_ms=opt_int("session_since_ms"),
            messages_sent=opt_int("messages_sent") or 0,
            messages_received=opt_int("messages_received") or 0,
            blocked=d.get("blocked") is True,
            raw=dict(d),
        )


@dataclass(frozen=True)
class Card:
    """An agent's signed card (``GET /v1/card``, ``POST /v1/cards``).

    ``card`` is the exportable string (multibase base64url of the signed
    DHT record): hand it out of band, and whoever imports it reaches the
    agent with no DHT until ``expires_ms``."""

    amid: str
    seq: int
    expires_ms: int
    card: str | None = None
    name: str | None = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Card:
        return cls(
            amid=_str(d, "amid", "card"),
            seq=_int(d, "seq", "card", 0),
            expires_ms=_int(d, "expires_ms", "card", 0),
            card=_opt_str(d, "card"),
            name=_opt_str(d, "name"),
            raw=dict(d),
        )

    def __str__(self) -> str:
        return self.card or ""


@dataclass(frozen=True)
class PolicyCheck:
    """What a KNOCK policy would decide on a KNOCK (``POST /v1/policy/check``)."""

    accepted: bool
    #: The reject reason (``blocked``, ``intent_denied``, ...) when refused.
    reason: str | None
    policy_hash: str
    #: The decision as the node wrote it (``{"accept": {...}}`` or
    #: ``{"reject": {"reason": ...}}``).
    decision: Any = field(compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PolicyCheck:
        decision = d.get("decision")
        accepted = False
        reason: str | None = None
        if isinstance(decision, dict):
            accepted = "accept" in decision
            rej = decision.get("reject")
            if isinstance(rej, dict) and isinstance(rej.get("reason"), str):
                reason = rej["reason"]
        elif isinstance(decision, str):
            accepted = decision == "accept"
        return cls(
            accepted=accepted,
            reason=reason,
            policy_hash=_str(d, "policy_hash", "policy check"),
            decision=decision,
        )


@dataclass(frozen=True)
class DashboardLink:
    """A one-time link that logs a browser into the node's dashboard
    (``POST /v1/dashboard/link``)."""

    #: ``http://127.0.0.1:PORT/login?code=...``: usable once.
    url: str
    #: Seconds the link stays valid (``None`` if the node did not say).
    expires_in_s: int | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DashboardLink:
        ttl = d.get("expires_in_s")
        return cls(
            url=_str(d, "url", "dashboard link"),
            expires_in_s=ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None,
        )


@dataclass(frozen=True)
class StreamResult:
    """What ``POST /v1/stream`` sent."""

    chunks: int
    bytes: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StreamResult:
        return cls(chunks=_int(d, "chunks", "stream", 0), bytes=_int(d, "bytes", "stream", 0))


#: The ids of the standard message schemas every node knows.
STANDARD_SCHEMAS = (
    "agentmesh/text@1",
    "agentmesh/request@1",
    "agentmesh/response@1",
    "agentmesh/error@1",
    "agentmesh/task-update@1",
    "agentmesh/file-offer@1",
)


def _accepted(v: Any, what: str) -> dict[str, list[str]]:
    """``{capability: [schema id, ...]}``, checked."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadResponse(f"{what}: expected an object of capabilities")
    out: dict[str, list[str]] = {}
    for capability, ids in v.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadResponse(f"{what}: the schemas of {capability!r} are not a list of ids")
        out[capability] = list(ids)
    return out


def card_schemas(card: Mapping[str, Any]) -> dict[str, list[str]]:
    """The message schemas an agent's card (:meth:`Client.lookup`) says it
    takes, per capability: ``{}`` when the card lists none."""
    return _accepted(card.get("schemas"), "card schemas")


@dataclass(frozen=True)
class SchemaCatalog:
    """The message schemas a node knows and those it takes
    (``GET /v1/schemas``).

    ``schemas`` maps each schema id it knows (the standard ones,
    :data:`STANDARD_SCHEMAS`, and custom ``x-<ns>/<name>@<major>`` ones) to
    its JSON Schema, in the node's order; ``accepted`` maps each capability
    that takes schemas to their ids (what its card lists). A capability not
    in ``accepted`` takes any payload."""

    schemas: dict[str, JSON]
    accepted: dict[str, list[str]]
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def ids(self) -> list[str]:
        """The ids of the schemas the node knows."""
        return list(self.schemas)

    def accepts(self, capability: str) -> list[str]:
        """The schemas the node takes for ``capability`` (``[]``: any payload)."""
        return list(self.accepted.get(capability, []))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SchemaCatalog:
        what = "schemas"
        raw = d.get("schemas")
        if not isinstance(raw, list):
            raise BadResponse(f"{what}: 'schemas' is missing or not a list")
        schemas: dict[str, JSON] = {}
        for item in raw:
            entry = _object(item, what)
            schema = entry.get("schema")
            if not isinstance(schema, dict):
                raise BadResponse(f"{what}: the schema of {entry.get('id')!r} is not an object")
            schemas[_str(entry, "id", what)] = schema
        return cls(schemas=schemas, accepted=_accepted(d.get("accepted"), what), raw=dict(d))
