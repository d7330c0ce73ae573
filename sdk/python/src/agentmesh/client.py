"""Clients of a node's local API: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), both over httpx.

Times are in seconds (floats) on the Python side and converted to the
API's milliseconds.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import quote

import httpx

from ._version import __version__
from .errors import BadResponse, NodeNotRunning, error_from_body
from .models import (
    JSON,
    ApiInfo,
    Card,
    DashboardLink,
    Event,
    EventBatch,
    Message,
    Peer,
    PolicyCheck,
    Receipt,
    SchemaCatalog,
    StreamResult,
    card_schemas,
)

__all__ = ["AsyncClient", "Client", "DEFAULT_TIMEOUT"]

#: Seconds to wait for an answer that is not a long-poll (a send waits for
#: the recipient's acknowledgement, up to a minute on the node's side).
DEFAULT_TIMEOUT = 120.0
#: Added to a long-poll's own wait for the HTTP timeout.
_GRACE = 30.0

_PRESENCE_STATES = ("online", "away", "dnd", "offline")


def _ms(seconds: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(seconds * 1000)))


def _payload(payload: Any) -> Any:
    """A plain string is sent as ``{"text": ...}``, as the command line does."""
    return {"text": payload} if isinstance(payload, str) else payload


def _ids(ids: Iterable[str | Message]) -> list[str]:
    return [m.id if isinstance(m, Message) else m for m in ids]


def _amid(to: Any) -> str:
    """An AMID string, or anything with an ``amid`` attribute (an Agent)."""
    if isinstance(to, str):
        return to
    amid = getattr(to, "amid", None)
    if isinstance(amid, str):
        return amid
    raise TypeError(f"expected an AMID string or an Agent, got {type(to).__name__}")


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: Mapping[str, str | int | float] | None = None
    json: Any = None
    content: bytes | None = None
    timeout: float | None = None
    has_json: bool = False
    headers: Mapping[str, str] | None = None
    #: The answer is text (``/metrics``), not JSON.
    text: bool = False


def _post(path: str, body: Any, timeout: float | None = None) -> _Call:
    return _Call("POST", path, json=body, has_json=True, timeout=timeout)


def _get(
    path: str, params: Mapping[str, str | int | float] | None = None, timeout: float | None = None
) -> _Call:
    return _Call("GET", path, params=params, timeout=timeout)


def _diagnostics_call(punch: str | None) -> _Call:
    return _get("/v1/diagnostics", None if punch is None else {"punch": _amid(punch)})


def _obj(data: Any, key: str | None = None) -> Any:
    """``data`` checked to be an object, or its member ``key``."""
    if not isinstance(data, dict):
        raise BadResponse("the node answered something that is not a JSON object")
    if key is None:
        return data
    if key not in data:
        raise BadResponse(f"the node's answer has no {key!r}")
    return data[key]


def _dict(data: Any, key: str | None = None) -> JSON:
    """Like :func:`_obj`, and the result must be an object."""
    v = _obj(data, key)
    if not isinstance(v, dict):
        raise BadResponse(f"the node's {key or 'answer'} is not a JSON object")
    return v


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadResponse(f"{what} is not an integer")
    return v


# Route builders and answer parsers, shared by both clients.


def _intent(body: JSON, capability: str | None, schema: str | None) -> JSON:
    """``body`` with the intent's ``capability`` and ``schema``, when given."""
    if capability is not None:
        body["capability"] = capability
    if schema is not None:
        if not isinstance(schema, str):
            raise TypeError("schema: a schema id such as 'agentmesh/request@1'")
        body["schema"] = schema
    return body


def _send_call(
    to: str, payload: Any, capability: str | None, schema: str | None, wait: bool, timeout: float
) -> _Call:
    body = _intent({"to": to, "payload": _payload(payload)}, capability, schema)
    if not wait:
        body["wait"] = False
    return _post("/v1/send", body, timeout)


def _send_answer(data: Any, wait: bool) -> Receipt | str:
    if wait:
        return Receipt.from_json(_dict(data, "receipt"))
    mid = _obj(data, "id")
    if not isinstance(mid, str):
        raise BadResponse("the send answer's id is not a string")
    return mid


def _request_call(
    to: str, payload: Any, capability: str | None, schema: str | None, timeout: float
) -> _Call:
    body: JSON = {"to": to, "payload": _payload(payload), "timeout_ms": _ms(timeout, 1, 2**53)}
    _intent(body, capability, schema)
    return _post("/v1/request", body, timeout + _GRACE)


def _reply_call(to: str, id: str, payload: Any, session: str | None, timeout: float) -> _Call:
    body: JSON = {"to": to, "id": id, "payload": _payload(payload)}
    if session is not None:
        body["session"] = session
    return _post("/v1/reply", body, timeout)


def _stream_call(
    to: str,
    data: bytes | None,
    path: str | os.PathLike[str] | None,
    chunk_size: int | None,
    capability: str | None,
    timeout: float,
) -> _Call:
    if (data is None) == (path is None):
        raise ValueError("stream: give either data or path")
    body: JSON = {"to": to}
    if data is not None:
        body["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        assert path is not None
        body["path"] = str(Path(path).resolve())
    if chunk_size is not None:
        body["chunk_size"] = chunk_size
    if capability is not None:
        body["capability"] = capability
    return _post("/v1/stream", body, timeout)


def _messages_call(wait: float, max_: int, lease: float) -> _Call:
    params = {
        "wait_ms": _ms(wait, 0, 60_000),
        "max": min(256, max(1, max_)),
        "lease_ms": _ms(lease, 1000, 600_000),
    }
    return _get("/v1/messages", params, wait + _GRACE)


def _messages_answer(data: Any, client: Client | AsyncClient) -> list[Message]:
    raw = _obj(data, "messages")
    if not isinstance(raw, list):
        raise BadResponse("'messages' is not a list")
    return [Message.from_json(_dict(m), client) for m in raw]


def _events_call(since: int | None, wait: float, limit: int | None) -> _Call:
    params: dict[str, str | int] = {"wait_ms": _ms(wait, 0, 60_000)}
    if since is not None:
        params["since"] = since
    if limit is not None:
        params["limit"] = min(1000, max(1, limit))
    return _get("/v1/events", params, wait + _GRACE)


def _audit_call(peer: str | None, kind: str | None, limit: int | None, verify: bool) -> _Call:
    params: dict[str, str | int] = {}
    if peer is not None:
        params["peer"] = peer
    if kind is not None:
        params["kind"] = kind
    if limit is not None:
        params["limit"] = limit
    if verify:
        params["verify"] = "true"
    return _get("/v1/audit", params)


def _check_call(
    capability: str,
    from_: str | None,
    action: str | None,
    tier: str | None,
    reputation: float | None,
    policy: str | None,
) -> _Call:
    body: JSON = {"capability": capability}
    for k, v in (
        ("from", from_),
        ("action", action),
        ("tier", tier),
        ("reputation", reputation),
        ("policy", policy),
    ):
        if v is not None:
            body[k] = v
    return _post("/v1/policy/check", body)


def _presence_call(state: str) -> _Call:
    if state not in _PRESENCE_STATES:
        raise ValueError(f"presence: one of {', '.join(_PRESENCE_STATES)}")
    return _Call("PUT", "/v1/presence", json={"state": state}, has_json=True)


def _set_policy_call(toml_text: str) -> _Call:
    return _Call("PUT", "/v1/policy", json={"policy": toml_text}, has_json=True)


def _register_call(name: str, capabilities: Sequence[str] | None) -> _Call:
    if isinstance(capabilities, str):
        raise TypeError("register: capabilities is a list of strings, not a string")
    body: JSON = {"name": name}
    if capabilities is not None:
        body["capabilities"] = list(capabilities)
    return _post("/v1/registry/register", body)


def _search_call(
    capability: str, tier_min: str | None, reputation_min: float | None, limit: int | None
) -> _Call:
    params: dict[str, str | int | float] = {"capability": capability}
    if tier_min is not None:
        params["tier_min"] = tier_min
    if reputation_min is not None:
        params["reputation_min"] = reputation_min
    if limit is not None:
        params["limit"] = limit
    return _get("/v1/registry/search", params)


def _search_answer(data: Any) -> list[JSON]:
    """The agents of ``{"results": {"count": n, "results": [...]}}``."""
    raw = _dict(data, "results").get("results")
    if not isinstance(raw, list):
        raise BadResponse("the registry's search answer has no list of results")
    return [_dict(r) for r in raw]


# Routes that take no body are sent none: a body the node does not read
# can make it close the connection, and the next request on it would fail.
_DASHBOARD_LINK = _Call("POST", "/v1/dashboard/link")
_KILL_CLEAR = _Call("POST", "/v1/kill/clear")
_RELOAD_POLICY = _Call("POST", "/v1/policy/reload")
_METRICS = _Call("GET", "/metrics", text=True, headers={"Accept": "text/plain"})
_SCHEMAS = _Call("GET", "/v1/schemas")


def _session_answer(data: Any) -> str | None:
    v = _obj(data).get("session")
    return v if isinstance(v, str) else None


def _inbox_answer(data: Any) -> dict[str, int]:
    inbox = _obj(data).get("inbox")
    if not isinstance(inbox, dict):
        raise BadResponse("the status answer has no 'inbox'")
    return {k: v for k, v in inbox.items() if isinstance(v, int)}


def _peers_answer(data: Any) -> list[Peer]:
    raw = _obj(data, "peers")
    if not isinstance(raw, list):
        raise BadResponse("'peers' is not a list")
    return [Peer.from_json(_dict(p)) for p in raw]


def _card_text(card: str | bytes | os.PathLike[str] | Card) -> str:
    """A card as the API takes it: an exported string (``u...``), a
    :class:`Card`, the bytes of the signed record, or a file holding either."""
    if isinstance(card, Card):
        if card.card is None:
            raise ValueError("this Card holds no exported string")
        return card.card
    if isinstance(card, bytes):
        try:
            return _card_text(card.decode().strip())
        except UnicodeDecodeError:
            return "u" + base64.urlsafe_b64encode(card).decode().rstrip("=")
    if isinstance(card, str):
        text = card.strip()
        if text.startswith("u") and not _is_file(text):
            return text
    return _card_text(Path(card).read_bytes())


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # a card string too long to be a file name
        return False


def _import_call(card: str | bytes | os.PathLike[str] | Card, name: str | None) -> _Call:
    body: dict[str, Any] = {"card": _card_text(card)}
    if name is not None:
        body["name"] = name
    return _post("/v1/cards", body)


def _name_call(name: str, amid: Any) -> _Call:
    return _post("/v1/names", {"name": name, "amid": _amid(amid)})


def _remove_name_call(name: str) -> _Call:
    return _Call("DELETE", f"/v1/names/{quote(name, safe='')}")


def _names_answer(data: Any) -> dict[str, str]:
    raw = _obj(data, "names")
    if not isinstance(raw, list):
        raise BadResponse("'names' is not a list")
    out: dict[str, str] = {}
    for n in raw:
        d = _dict(n)
        name, amid = d.get("name"), d.get("amid")
        if isinstance(name, str) and isinstance(amid, str):
            out[name] = amid
    return out


class _SseParser:
    """Server-Sent Events, line by line: yields each event's ``Event``."""

    def __init__(self) -> None:
        self.data: list[str] = []
        self.id: str | None = None
        self.name: str | None = None

    def feed(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self.data.append(value)
        elif field == "id":
            self.id = value
        elif field == "event":
            self.name = value
        return None

    def _dispatch(self) -> Event | None:
        data, eid, name = "\n".join(self.data), self.id, self.name
        self.data, self.id, self.name = [], None, None
        if not data:
            return None
        try:
            v = json.loads(data)
        except ValueError as e:
            raise BadResponse(f"an SSE event that is not JSON: {data[:100]!r}") from e
        if not isinstance(v, dict):
            raise BadResponse("an SSE event that is not a JSON object")
        if "id" in v and "event" in v and isinstance(v.get("event"), dict):
            return Event.from_json(v)
        # An event without an id of its own: the stream's opening "dropped".
        if name and "event" not in v:
            v = {"event": name, **v}
        return Event(id=int(eid) if eid and eid.isdigit() else 0, ts_ms=0, event=v)


def _sse_params(since: int | None) -> dict[str, str | int]:
    return {} if since is None else {"since": since}


def _headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "User-Agent": f"agentmesh-python/{__version__}",
        "Accept": "application/json",
    }


def _decode(resp: httpx.Response, text: bool = False) -> Any:
    if resp.status_code >= 400:
        raise error_from_body(resp.status_code, resp.content)
    if text:
        return resp.text
    if not resp.content:
        return {}
    try:
        return resp.json()
    except ValueError as e:
        raise BadResponse(f"the node answered HTTP {resp.status_code} that is not JSON") from e


def _unreachable(url: str, e: Exception) -> NodeNotRunning:
    return NodeNotRunning(f"the node at {url} does not answer ({type(e).__name__}: {e})")


def _request_kwargs(c: _Call, default_timeout: float) -> dict[str, Any]:
    kw: dict[str, Any] = {"timeout": c.timeout if c.timeout is not None else default_timeout}
    if c.params is not None:
        kw["params"] = dict(c.params)
    if c.headers is not None:
        kw["headers"] = dict(c.headers)
    if c.content is not None:
        kw["content"] = c.content
    elif c.has_json:
        kw["json"] = c.json
    return kw


class _Base:
    info: ApiInfo

    @property
    def url(self) -> str:
        """The API's base URL (``http://localhost`` over the Unix socket)."""
        return self.info.url or f"http://localhost (unix socket {self.info.socket})"

    @property
    def amid(self) -> str | None:
        """The node's AMID, as ``api.json`` gives it (``None`` if not known)."""
        return self.info.amid


class Client(_Base):
    """A blocking client of one node's local API.

    >>> c = Client.from_data_dir("~/.agentmesh")          # doctest: +SKIP
    >>> c.send(bob_amid, {"text": "hello"}).path           # doctest: +SKIP
    'direct-quic'
    """

    def __init__(
        self,
        url: str | None,
        token: str,
        *,
        amid: str | None = None,
        socket: str | None = None,
        use_socket: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.info = ApiInfo(
            url=url.rstrip("/") if url else None, token=token, socket=socket, amid=amid
        )
        self.timeout = timeout
        base = self.info.url or "http://localhost"
        if transport is None and (use_socket or not url):
            if not socket:
                raise ValueError("no URL and no socket to reach the node by")
            transport = httpx.HTTPTransport(uds=socket)
            base = "http://localhost"
        self._http = httpx.Client(
            base_url=base, headers=_headers(token), transport=transport, timeout=timeout
        )

    @classmethod
    def from_info(cls, info: ApiInfo, **kwargs: Any) -> Client:
        """A client for the API that ``info`` (an ``api.json``) describes."""
        c = cls(info.url, info.token, amid=info.amid, socket=info.socket, **kwargs)
        c.info = info
        return c

    @classmethod
    def from_data_dir(cls, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Client:
        """A client for the node running in ``data_dir`` (default
        ``$AGENTMESH_HOME`` or ``~/.agentmesh``), from its ``api.json``."""
        if data_dir is not None:
            data_dir = Path(data_dir).expanduser()
        return cls.from_info(ApiInfo.load(data_dir), **kwargs)

    def close(self) -> None:
        """Closes the HTTP connections (the node keeps running)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The transport.

    def _do(self, c: _Call) -> Any:
        try:
            resp = self._http.request(c.method, c.path, **_request_kwargs(c, self.timeout))
        except (httpx.TransportError, OSError) as e:
            raise _unreachable(self.url, e) from e
        return _decode(resp, c.text)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Any route, raw: returns the decoded JSON answer, raises the
        :class:`AgentMeshError` subclass of an error answer."""
        return self._do(
            _Call(
                method.upper(),
                path,
                params=params,
                json=json,
                content=content,
                timeout=timeout,
                has_json=json is not None,
                headers=headers,
            )
        )

    # Messages out.

    @overload
    def send(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = ...,
        schema: str | None = ...,
        wait: Literal[True] = ...,
    ) -> Receipt: ...

    @overload
    def send(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = ...,
        schema: str | None = ...,
        wait: Literal[False],
    ) -> str: ...

    def send(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = None,
        schema: str | None = None,
        wait: bool = True,
    ) -> Receipt | str:
        """Sends ``payload`` (any JSON value; a string is sent as
        ``{"text": ...}``) to ``to``. Returns the :class:`Receipt` once the
        recipient acknowledged it (or a relay mailbox took it); with
        ``wait=False``, the message id at once (the outcome comes as an event).

        ``capability`` is the intent declared in the KNOCK (default
        ``communication/messaging``); ``schema`` names the message schema
        the payload follows (``agentmesh/request@1``, or a custom
        ``x-<ns>/<name>@<major>``). A recipient that lists schemas for the
        capability (:meth:`schemas_of`) refuses a KNOCK naming none or
        another (:class:`Rejected`, ``reason == "unsupported_schema"``) and a
        payload its schema refuses (``reason == "schema_invalid"``); a
        payload that fails a schema this node knows raises
        :class:`InvalidPayload` before anything is sent."""
        data = self._do(_send_call(to, payload, capability, schema, wait, self.timeout))
        return _send_answer(data, wait)

    def request(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = None,
        schema: str | None = None,
        timeout: float = 30.0,
    ) -> Message:
        """Sends a request and returns the reply (raises :class:`ReplyTimeout`
        when none comes within ``timeout`` seconds). ``capability`` and
        ``schema`` as for :meth:`send`."""
        data = self._do(_request_call(to, payload, capability, schema, timeout))
        return Message.from_json(_dict(data, "reply"), self)

    def reply(self, to: str, id: str, payload: Any, *, session: str | None = None) -> Receipt:
        """Answers message ``id`` from ``to``."""
        data = self._do(_reply_call(to, id, payload, session, self.timeout))
        return Receipt.from_json(_dict(data, "receipt"))

    def end(self, amid: str) -> str | None:
        """Ends the conversation with ``amid`` (an end message after
        everything sent before; both sides then forget the session);
        returns the id of the session that ended."""
        return _session_answer(self._do(_post("/v1/end", {"amid": amid})))

    def stream(
        self,
        to: str,
        data: bytes | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        chunk_size: int | None = None,
        capability: str | None = None,
    ) -> StreamResult:
        """Sends bytes (or the file at ``path``, read by the node) as a stream
        of end-to-end encrypted chunks."""
        c = _stream_call(to, data, path, chunk_size, capability, self.timeout)
        return StreamResult.from_json(_dict(self._do(c)))

    # Messages in.

    def messages(self, *, wait: float = 0.0, max: int = 32, lease: float = 30.0) -> list[Message]:
        """Messages waiting in the inbox, in arrival order, each leased to this
        reader for ``lease`` seconds. Waits up to ``wait`` seconds for the
        first one. Acknowledge each after handling it (:meth:`ack`)."""
        return _messages_answer(self._do(_messages_call(wait, max, lease)), self)

    def ack(self, ids: Iterable[str | Message]) -> int:
        """Acknowledges messages: the node removes them from its inbox."""
        data = self._do(_post("/v1/messages/ack", {"ids": _ids(ids)}))
        return _as_int(_obj(data, "acked"), "acked")

    def release(self, ids: Iterable[str | Message]) -> int:
        """Ends the lease of messages: they are handed out again at once."""
        data = self._do(_post("/v1/messages/release", {"ids": _ids(ids)}))
        return _as_int(_obj(data, "released"), "released")

    def events(
        self, *, since: int | None = None, wait: float = 0.0, limit: int | None = None
    ) -> EventBatch:
        """Node events after id ``since`` (all kept ones when ``None``);
        waits up to ``wait`` seconds for the first."""
        return EventBatch.from_json(_dict(self._do(_events_call(since, wait, limit))))

    def event_stream(self, *, since: int | None = None) -> Iterator[Event]:
        """Node events after id ``since`` as they happen, over Server-Sent
        Events (``GET /v1/events/stream``); runs until the caller stops
        iterating. When events after ``since`` are no longer kept, the
        stream opens with an event ``{"event": "dropped", "count": n}``
        (its ``id`` is 0)."""
        try:
            with self._http.stream(
                "GET",
                "/v1/events/stream",
                params=_sse_params(since),
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise error_from_body(resp.status_code, resp.content)
                parser = _SseParser()
                for line in resp.iter_lines():
                    e = parser.feed(line)
                    if e is not None:
                        yield e
        except (httpx.TransportError, OSError) as e:
            raise _unreachable(self.url, e) from e

    # The node.

    def status(self) -> JSON:
        """The node's status (AMID, sessions, peers, network)."""
        return _dict(self._do(_get("/v1/status")), "status")

    def inbox_counts(self) -> dict[str, int]:
        """Messages in the API's inbox: ``{"ready": n, "leased": m}``."""
        return _inbox_answer(self._do(_get("/v1/status")))

    def peers(self) -> list[Peer]:
        """Agents the node knows (sessions, imported cards, petnames,
        connections): petname, presence, last seen, path, sessions."""
        return _peers_answer(self._do(_get("/v1/peers")))

    def sessions(self) -> list[JSON]:
        """The node's sessions."""
        return list(_obj(self._do(_get("/v1/sessions")), "sessions"))

    def export_card(self) -> Card:
        """This agent's signed card (the record it publishes in the DHT).
        ``str(card)`` is the string to hand out of band: whoever imports it
        (:meth:`import_card`) reaches this agent with no DHT."""
        return Card.from_json(_dict(self._do(_get("/v1/card"))))

    def import_card(
        self, card: str | bytes | os.PathLike[str] | Card, *, name: str | None = None
    ) -> Card:
        """Imports another agent's card (its exported string, a :class:`Card`,
        or a file): the node verifies the signature and expiry, keeps it,
        and reaches that agent with it before any DHT lookup. ``name`` also
        gives the agent a petname. A forged card raises
        :class:`InvalidCard`, an expired one :class:`CardExpired`."""
        return Card.from_json(_dict(self._do(_import_call(card, name))))

    def set_name(self, name: str, amid: Any) -> None:
        """Names ``amid`` locally (never published): the name is then taken
        wherever an AMID is. Names are lower case (a-z, 0-9, ``-_.``,
        starting with a letter, at most 32); others raise
        :class:`InvalidName`."""
        self._do(_name_call(name, amid))

    def remove_name(self, name: str) -> str:
        """Forgets a petname; returns the AMID it named."""
        return str(_obj(self._do(_remove_name_call(name)), "amid"))

    def names(self) -> dict[str, str]:
        """Every petname and the AMID it names."""
        return _names_answer(self._do(_get("/v1/names")))

    def lookup(self, amid: str) -> JSON:
        """An agent's card from the DHT (raises :class:`NotFound` if none)."""
        return _dict(self._do(_get(f"/v1/lookup/{amid}")), "card")

    def schemas(self) -> SchemaCatalog:
        """The message schemas this node knows (the standard ones and those
        given with ``--schema-file``) and those it takes per capability
        (``--accept-schema``, listed in its card): ``GET /v1/schemas``."""
        return SchemaCatalog.from_json(_dict(self._do(_SCHEMAS)))

    def schemas_of(self, amid: str) -> dict[str, list[str]]:
        """The message schemas another agent takes, per capability, from
        its card (:meth:`lookup`): ``{}`` when it lists none (it takes any
        payload)."""
        return card_schemas(self.lookup(amid))

    def close_sessions(self, amid: str) -> int:
        """Ends every session with ``amid``; returns how many."""
        return _as_int(_obj(self._do(_post("/v1/close", {"amid": amid})), "closed"), "closed")

    def disconnect(self, amid: str) -> None:
        """Closes every connection to ``amid`` (sessions stay)."""
        self._do(_post("/v1/disconnect", {"amid": amid}))

    def block(self, amid: str) -> None:
        """Blocks ``amid``: its KNOCKs are refused."""
        self._do(_post("/v1/block", {"amid": amid}))

    def kill(self, amid: str | None = None) -> None:
        """The kill switch: for ``amid``, or for everyone when ``None``."""
        self._do(_post("/v1/kill", {} if amid is None else {"amid": amid}))

    def kill_clear(self) -> None:
        """Turns the kill switch for everyone off."""
        self._do(_KILL_CLEAR)

    def presence(self, state: str) -> None:
        """Sets this agent's presence: ``online``, ``away``, ``dnd`` or ``offline``."""
        self._do(_presence_call(state))

    def policy(self) -> JSON:
        """``{"policy": ..., "policy_hash": ...}``."""
        return _dict(self._do(_get("/v1/policy")))

    def reload_policy(self) -> str:
        """Makes the node read its policy file again; returns the new hash."""
        return str(_obj(self._do(_RELOAD_POLICY), "policy_hash"))

    def check_policy(
        self,
        capability: str,
        *,
        from_: str | None = None,
        action: str | None = None,
        tier: str | None = None,
        reputation: float | None = None,
        policy: str | None = None,
    ) -> PolicyCheck:
        """What the policy in force (or ``policy``, TOML text) would decide
        on a KNOCK from ``from_`` (default: a fresh anonymous AMID) with this
        intent, ``tier`` (``anonymous``, ``verified``, ``organization``) and
        ``reputation`` (0..1). Nothing is sent or recorded."""
        c = _check_call(capability, from_, action, tier, reputation, policy)
        return PolicyCheck.from_json(_dict(self._do(c)))

    def set_policy(self, toml_text: str) -> str:
        """Puts a KNOCK policy (TOML text) in force at once; returns its hash.
        The node's policy file, if any, is not changed: a reload or a restart
        reads it again. A policy that does not parse raises :class:`BadRequest`."""
        return str(_obj(self._do(_set_policy_call(toml_text)), "policy_hash"))

    def audit(
        self,
        *,
        peer: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        verify: bool = False,
    ) -> JSON:
        """The audit log: ``{"audit": [...], "verified"?: ...}``."""
        return _dict(self._do(_audit_call(peer, kind, limit, verify)))

    def receipts(self) -> Any:
        """The session receipts the node holds."""
        return _obj(self._do(_get("/v1/receipts")), "receipts")

    def credentials(self, *, renew: bool = False) -> Any:
        """The credentials the node shows in KNOCKs (fetched anew with ``renew``)."""
        body = {"renew": True} if renew else {}
        return _obj(self._do(_post("/v1/credentials", body)), "credentials")

    # The registry and the dashboard.

    def register(self, name: str, capabilities: Sequence[str] | None = None) -> JSON:
        """Registers this agent with the node's registry (``--registry``)
        under the display name ``name``, offering ``capabilities`` (lowercase
        paths such as ``"chat"`` or ``"weather/forecast"``; default: the
        node's card's). Returns the registry's answer (``amid``, ``created``,
        ``tier``, ``registered_ms``). Raises :class:`BadRequest` when the
        registry refuses (a malformed capability, say) and :class:`NotFound`
        when the node has no registry."""
        return _dict(self._do(_register_call(name, capabilities)), "registration")

    def search(
        self,
        capability: str,
        *,
        tier_min: str | None = None,
        reputation_min: float | None = None,
        limit: int | None = None,
    ) -> list[JSON]:
        """Agents of the node's registry offering ``capability`` (or a
        capability under it: ``"weather"`` finds ``"weather/forecast"``),
        with at least ``tier_min`` (``anonymous``, ``verified``,
        ``organization``) and ``reputation_min`` (0..1), at most ``limit``.
        Each is an object with ``amid``, ``display_name``, ``capabilities``,
        ``tier``, ``reputation``, ``presence``, ..."""
        c = _search_call(capability, tier_min, reputation_min, limit)
        return _search_answer(self._do(c))

    def dashboard_link(self) -> DashboardLink:
        """A one-time link that logs a browser into the node's dashboard
        (as ``agentmesh dashboard`` prints). Raises :class:`NotFound` when the
        API is served on the Unix socket only."""
        return DashboardLink.from_json(_dict(self._do(_DASHBOARD_LINK)))

    def metrics(self) -> str:
        """The node's metrics in the Prometheus text format (``GET /metrics``)."""
        return str(self._do(_METRICS))

    def timeseries(self) -> JSON:
        """The last hour, minute by minute (``GET /v1/stats/timeseries``):
        ``minutes`` (oldest first, each with ``sent`` and ``received`` by
        path and ``knocks`` accepted and rejected) and ``latency``, the
        delivery latency histogram (what the dashboard plots)."""
        return _dict(self._do(_get("/v1/stats/timeseries")))

    def registry_standing(self) -> JSON:
        """This agent's tier and reputation at the registry, from the node's
        cache (``GET /v1/registry/standing``): ``state`` is ``checking``,
        ``not_configured``, ``registered`` (with ``tier`` and
        ``reputation``), ``not_registered`` or ``unknown``. Never waits on
        the registry."""
        return _dict(self._do(_get("/v1/registry/standing")))

    def diagnostics(self, *, punch: str | None = None) -> JSON:
        """What ``agentmesh doctor`` checks, run by the node
        (``GET /v1/diagnostics``): ``checks``, each with ``check``,
        ``result`` (``ok``, ``warn``, ``fail``, ``skip``), ``detail`` and
        ``fix``; the NAT mapping and the probes it was inferred from; our
        clock against the registry's (``registry_clock``). With ``punch``
        (an AMID), the node also reaches that agent and waits up to 10 s
        for a direct connection: the ``punch probe`` check and ``punch``
        (``outcome``: ``direct``, ``relayed_only`` or ``unreachable``)."""
        return _dict(self._do(_diagnostics_call(punch)))

    def openapi(self) -> JSON:
        """The OpenAPI document of the local API."""
        return _dict(self._do(_get("/v1/openapi.json")))


class AsyncClient(_Base):
    """An asyncio client of one node's local API; the same methods as
    :class:`Client`, as coroutines."""

    def __init__(
        self,
        url: str | None,
        token: str,
        *,
        amid: str | None = None,
        socket: str | None = None,
        use_socket: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.info = ApiInfo(
            url=url.rstrip("/") if url else None, token=token, socket=socket, amid=amid
        )
        self.timeout = timeout
        base = self.info.url or "http://localhost"
        if transport is None and (use_socket or not url):
            if not socket:
                raise ValueError("no URL and no socket to reach the node by")
            transport = httpx.AsyncHTTPTransport(uds=socket)
            base = "http://localhost"
        self._http = httpx.AsyncClient(
            base_url=base, headers=_headers(token), transport=transport, timeout=timeout
        )

    @classmethod
    def from_info(cls, info: ApiInfo, **kwargs: Any) -> AsyncClient:
        """A client for the API that ``info`` (an ``api.json``) describes."""
        c = cls(info.url, info.token, amid=info.amid, socket=info.socket, **kwargs)
        c.info = info
        return c

    @classmethod
    def from_data_dir(
        cls, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> AsyncClient:
        """A client for the node running in ``data_dir``, from its ``api.json``."""
        if data_dir is not None:
            data_dir = Path(data_dir).expanduser()
        return cls.from_info(ApiInfo.load(data_dir), **kwargs)

    async def aclose(self) -> None:
        """Closes the HTTP connections (the node keeps running)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _do(self, c: _Call) -> Any:
        try:
            resp = await self._http.request(c.method, c.path, **_request_kwargs(c, self.timeout))
        except (httpx.TransportError, OSError) as e:
            raise _unreachable(self.url, e) from e
        return _decode(resp, c.text)

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Any route, raw (see :meth:`Client.call`)."""
        return await self._do(
            _Call(
                method.upper(),
                path,
                params=params,
                json=json,
                content=content,
                timeout=timeout,
                has_json=json is not None,
                headers=headers,
            )
        )

    @overload
    async def send(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = ...,
        schema: str | None = ...,
        wait: Literal[True] = ...,
    ) -> Receipt: ...

    @overload
    async def send(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = ...,
        schema: str | None = ...,
        wait: Literal[False],
    ) -> str: ...

    async def send(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = None,
        schema: str | None = None,
        wait: bool = True,
    ) -> Receipt | str:
        """See :meth:`Client.send`."""
        data = await self._do(_send_call(to, payload, capability, schema, wait, self.timeout))
        return _send_answer(data, wait)

    async def request(
        self,
        to: str,
        payload: Any,
        *,
        capability: str | None = None,
        schema: str | None = None,
        timeout: float = 30.0,
    ) -> Message:
        """See :meth:`Client.request`."""
        data = await self._do(_request_call(to, payload, capability, schema, timeout))
        return Message.from_json(_dict(data, "reply"), self)

    async def reply(self, to: str, id: str, payload: Any, *, session: str | None = None) -> Receipt:
        """See :meth:`Client.reply`."""
        data = await self._do(_reply_call(to, id, payload, session, self.timeout))
        return Receipt.from_json(_dict(data, "receipt"))

    async def end(self, amid: str) -> str | None:
        """See :meth:`Client.end`."""
        return _session_answer(await self._do(_post("/v1/end", {"amid": amid})))

    async def stream(
        self,
        to: str,
        data: bytes | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        chunk_size: int | None = None,
        capability: str | None = None,
    ) -> StreamResult:
        """See :meth:`Client.stream`."""
        c = _stream_call(to, data, path, chunk_size, capability, self.timeout)
        return StreamResult.from_json(_dict(await self._do(c)))

    async def messages(
        self, *, wait: float = 0.0, max: int = 32, lease: float = 30.0
    ) -> list[Message]:
        """See :meth:`Client.messages`."""
        return _messages_answer(await self._do(_messages_call(wait, max, lease)), self)

    async def ack(self, ids: Iterable[str | Message]) -> int:
        """See :meth:`Client.ack`."""
        data = await self._do(_post("/v1/messages/ack", {"ids": _ids(ids)}))
        return _as_int(_obj(data, "acked"), "acked")

    async def release(self, ids: Iterable[str | Message]) -> int:
        """See :meth:`Client.release`."""
        data = await self._do(_post("/v1/messages/release", {"ids": _ids(ids)}))
        return _as_int(_obj(data, "released"), "released")

    async def events(
        self, *, since: int | None = None, wait: float = 0.0, limit: int | None = None
    ) -> EventBatch:
        """See :meth:`Client.events`."""
        return EventBatch.from_json(_dict(await self._do(_events_call(since, wait, limit))))

    async def event_stream(self, *, since: int | None = None) -> AsyncIterator[Event]:
        """See :meth:`Client.event_stream`."""
        try:
            async with self._http.stream(
                "GET",
                "/v1/events/stream",
                params=_sse_params(since),
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise error_from_body(resp.status_code, resp.content)
                parser = _SseParser()
                async for line in resp.aiter_lines():
                    e = parser.feed(line)
                    if e is not None:
                        yield e
        except (httpx.TransportError, OSError) as e:
            raise _unreachable(self.url, e) from e

    async def status(self) -> JSON:
        """See :meth:`Client.status`."""
        return _dict(await self._do(_get("/v1/status")), "status")

    async def inbox_counts(self) -> dict[str, int]:
        """See :meth:`Client.inbox_counts`."""
        return _inbox_answer(await self._do(_get("/v1/status")))

    async def peers(self) -> list[Peer]:
        """See :meth:`Client.peers`."""
        return _peers_answer(await self._do(_get("/v1/peers")))

    async def sessions(self) -> list[JSON]:
        """See :meth:`Client.sessions`."""
        return list(_obj(await self._do(_get("/v1/sessions")), "sessions"))

    async def export_card(self) -> Card:
        """See :meth:`Client.export_card`."""
        return Card.from_json(_dict(await self._do(_get("/v1/card"))))

    async def import_card(
        self, card: str | bytes | os.PathLike[str] | Card, *, name: str | None = None
    ) -> Card:
        """See :meth:`Client.import_card`."""
        return Card.from_json(_dict(await self._do(_import_call(card, name))))

    async def set_name(self, name: str, amid: Any) -> None:
        """See :meth:`Client.set_name`."""
        await self._do(_name_call(name, amid))

    async def remove_name(self, name: str) -> str:
        """See :meth:`Client.remove_name`."""
        return str(_obj(await self._do(_remove_name_call(name)), "amid"))

    async def names(self) -> dict[str, str]:
        """See :meth:`Client.names`."""
        return _names_answer(await self._do(_get("/v1/names")))

    async def lookup(self, amid: str) -> JSON:
        """See :meth:`Client.lookup`."""
        return _dict(await self._do(_get(f"/v1/lookup/{amid}")), "card")

    async def schemas(self) -> SchemaCatalog:
        """See :meth:`Client.schemas`."""
        return SchemaCatalog.from_json(_dict(await self._do(_SCHEMAS)))

    async def schemas_of(self, amid: str) -> dict[str, list[str]]:
        """See :meth:`Client.schemas_of`."""
        return card_schemas(await self.lookup(amid))

    async def close_sessions(self, amid: str) -> int:
        """See :meth:`Client.close_sessions`."""
        data = await self._do(_post("/v1/close", {"amid": amid}))
        return _as_int(_obj(data, "closed"), "closed")

    async def disconnect(self, amid: str) -> None:
        """See :meth:`Client.disconnect`."""
        await self._do(_post("/v1/disconnect", {"amid": amid}))

    async def block(self, amid: str) -> None:
        """See :meth:`Client.block`."""
        await self._do(_post("/v1/block", {"amid": amid}))

    async def kill(self, amid: str | None = None) -> None:
        """See :meth:`Client.kill`."""
        await self._do(_post("/v1/kill", {} if amid is None else {"amid": amid}))

    async def kill_clear(self) -> None:
        """See :meth:`Client.kill_clear`."""
        await self._do(_KILL_CLEAR)

    async def presence(self, state: str) -> None:
        """See :meth:`Client.presence`."""
        await self._do(_presence_call(state))

    async def policy(self) -> JSON:
        """See :meth:`Client.policy`."""
        return _dict(await self._do(_get("/v1/policy")))

    async def reload_policy(self) -> str:
        """See :meth:`Client.reload_policy`."""
        return str(_obj(await self._do(_RELOAD_POLICY), "policy_hash"))

    async def check_policy(
        self,
        capability: str,
        *,
        from_: str | None = None,
        action: str | None = None,
        tier: str | None = None,
        reputation: float | None = None,
        policy: str | None = None,
    ) -> PolicyCheck:
        """See :meth:`Client.check_policy`."""
        c = _check_call(capability, from_, action, tier, reputation, policy)
        return PolicyCheck.from_json(_dict(await self._do(c)))

    async def set_policy(self, toml_text: str) -> str:
        """See :meth:`Client.set_policy`."""
        return str(_obj(await self._do(_set_policy_call(toml_text)), "policy_hash"))

    async def audit(
        self,
        *,
        peer: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        verify: bool = False,
    ) -> JSON:
        """See :meth:`Client.audit`."""
        return _dict(await self._do(_audit_call(peer, kind, limit, verify)))

    async def receipts(self) -> Any:
        """See :meth:`Client.receipts`."""
        return _obj(await self._do(_get("/v1/receipts")), "receipts")

    async def credentials(self, *, renew: bool = False) -> Any:
        """See :meth:`Client.credentials`."""
        body = {"renew": True} if renew else {}
        return _obj(await self._do(_post("/v1/credentials", body)), "credentials")

    async def register(self, name: str, capabilities: Sequence[str] | None = None) -> JSON:
        """See :meth:`Client.register`."""
        return _dict(await self._do(_register_call(name, capabilities)), "registration")

    async def search(
        self,
        capability: str,
        *,
        tier_min: str | None = None,
        reputation_min: float | None = None,
        limit: int | None = None,
    ) -> list[JSON]:
        """See :meth:`Client.search`."""
        c = _search_call(capability, tier_min, reputation_min, limit)
        return _search_answer(await self._do(c))

    async def dashboard_link(self) -> DashboardLink:
        """See :meth:`Client.dashboard_link`."""
        return DashboardLink.from_json(_dict(await self._do(_DASHBOARD_LINK)))

    async def metrics(self) -> str:
        """See :meth:`Client.metrics`."""
        return str(await self._do(_METRICS))

    async def timeseries(self) -> JSON:
        """See :meth:`Client.timeseries`."""
        return _dict(await self._do(_get("/v1/stats/timeseries")))

    async def registry_standing(self) -> JSON:
        """See :meth:`Client.registry_standing`."""
        return _dict(await self._do(_get("/v1/registry/standing")))

    async def diagnostics(self, *, punch: str | None = None) -> JSON:
        """See :meth:`Client.diagnostics`."""
        return _dict(await self._do(_diagnostics_call(punch)))

    async def openapi(self) -> JSON:
        """See :meth:`Client.openapi`."""
        return _dict(await self._do(_get("/v1/openapi.json")))
