"""Tests that need no node: api.json, error mapping, the clients over
httpx.MockTransport, the Agent's handler loop and event iterator."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import agentmesh
from agentmesh import (
    Agent,
    AgentMeshError,
    ApiInfo,
    AsyncClient,
    BadResponse,
    CircuitOpen,
    Client,
    Message,
    NodeNotRunning,
    NotFound,
    Rejected,
    error_class,
    error_from_body,
)

AMID_A = "amAAAA"
AMID_B = "amBBBB"
TOKEN = "9f3c" * 16
HEX = "0123456789abcdef" * 2


def doc_path() -> Path:
    return Path(__file__).resolve().parents[3] / "docs" / "local-api.md"


# api.json


def write_api(d: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "url": "http://127.0.0.1:41234/",
        "token": TOKEN,
        "socket": str(d / "agentmesh.sock"),
        "amid": AMID_A,
        "version": 1,
    }
    data.update(over)
    (d / "api.json").write_text(json.dumps(data))
    return data


def test_api_json_is_read(tmp_path: Path) -> None:
    write_api(tmp_path)
    info = ApiInfo.load(tmp_path)
    assert info.url == "http://127.0.0.1:41234"
    assert info.token == TOKEN
    assert info.amid == AMID_A
    assert info.socket == str(tmp_path / "agentmesh.sock")
    assert info.version == 1
    assert info.data_dir == tmp_path
    c = Client.from_data_dir(tmp_path)
    assert c.url == info.url and c.amid == AMID_A
    c.close()


def test_api_json_missing_means_node_not_running(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning) as e:
        ApiInfo.load(tmp_path)
    assert e.value.code == "node_not_running"
    assert e.value.status is None
    with pytest.raises(NodeNotRunning):
        Agent.attach(tmp_path)


def test_api_json_broken(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text('{"url": "http://127.0.0.1:1"')
    with pytest.raises(BadResponse):
        ApiInfo.load(tmp_path)
    write_api(tmp_path, token=5)
    with pytest.raises(BadResponse):
        ApiInfo.load(tmp_path)


def test_api_json_optional_fields(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "t"}))
    info = ApiInfo.load(tmp_path)
    assert info.socket is None and info.amid is None and info.version == 1
    assert info.a2a is None
    write_api(tmp_path, a2a="http://127.0.0.1:5555/", future_field=[1])
    info = ApiInfo.load(tmp_path)
    assert info.a2a == "http://127.0.0.1:5555"
    assert Agent(Client.from_info(info)).a2a_url == "http://127.0.0.1:5555"


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTMESH_HOME", str(tmp_path))
    assert agentmesh.default_data_dir() == tmp_path
    write_api(tmp_path)
    assert ApiInfo.load().token == TOKEN
    monkeypatch.delenv("AGENTMESH_HOME")
    assert agentmesh.default_data_dir() == Path.home() / ".agentmesh"


def test_attach_to_a_stale_api_json(tmp_path: Path) -> None:
    # A node killed with SIGKILL leaves its api.json: nobody answers there.
    write_api(tmp_path, url="http://127.0.0.1:9")
    with pytest.raises(NodeNotRunning):
        Agent.attach(tmp_path)


# Errors

ALL_CODES = {
    "unauthorized": (agentmesh.Unauthorized, 401),
    "forbidden_origin": (agentmesh.ForbiddenOrigin, 403),
    "bad_host": (agentmesh.BadHost, 403),
    "bad_request": (agentmesh.BadRequest, 400),
    "invalid_amid": (agentmesh.InvalidAmid, 400),
    "invalid_id": (agentmesh.InvalidId, 400),
    "payload_too_large": (agentmesh.PayloadTooLarge, 413),
    "not_found": (agentmesh.NotFound, 404),
    "method_not_allowed": (agentmesh.MethodNotAllowed, 405),
    "rejected": (agentmesh.Rejected, 403),
    "invalid_payload": (agentmesh.InvalidPayload, 400),
    "invalid_recipient": (agentmesh.InvalidRecipient, 400),
    "no_session": (agentmesh.NoSession, 409),
    "delivery_timeout": (agentmesh.DeliveryTimeout, 504),
    "not_acknowledged": (agentmesh.NotAcknowledged, 504),
    "reply_timeout": (agentmesh.ReplyTimeout, 504),
    "unreachable": (agentmesh.Unreachable, 502),
    "circuit_open": (agentmesh.CircuitOpen, 503),
    "busy": (agentmesh.Busy, 503),
    "killed": (agentmesh.Killed, 503),
    "stopped": (agentmesh.Stopped, 503),
    "storage": (agentmesh.StorageError, 500),
    "internal": (agentmesh.InternalError, 500),
    "invalid_card": (agentmesh.InvalidCard, 400),
    "card_expired": (agentmesh.CardExpired, 400),
    "invalid_name": (agentmesh.InvalidName, 400),
}


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_every_code_has_its_class(code: str) -> None:
    cls, status = ALL_CODES[code]
    assert error_class(code) is cls
    assert cls.STATUS == status
    body = {"error": {"code": code, "message": f"it went wrong: {code}"}}
    e = error_from_body(status, json.dumps(body).encode())
    assert type(e) is cls
    assert isinstance(e, AgentMeshError)
    assert e.code == code and e.status == status
    assert e.message == f"it went wrong: {code}"
    assert code in str(e)


def test_the_contract_lists_no_code_we_do_not_know() -> None:
    doc = doc_path()
    if not doc.exists():
        pytest.skip(f"{doc} is not here (installed outside the source tree)")
    text = doc.read_text()
    section = text.split("## Errors", 1)[1].split("## Routes", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.M)
    assert len(rows) >= 20
    for code, status in rows:
        cls = error_class(code)
        assert cls is not AgentMeshError, f"no class for {code}"
        assert cls.STATUS == int(status), code
    assert {c for c, _ in rows} == set(ALL_CODES)


def test_rejected_carries_its_reason() -> None:
    body = {"error": {"code": "rejected", "message": "rejected: blocked", "reason": "blocked"}}
    e = error_from_body(403, body)
    assert isinstance(e, Rejected)
    assert e.reason == "blocked"
    assert e.body["reason"] == "blocked"


def test_circuit_open_carries_retry_after() -> None:
    body = {"error": {"code": "circuit_open", "message": "later", "retry_after_ms": 1500}}
    e = error_from_body(503, json.dumps(body))
    assert isinstance(e, CircuitOpen)
    assert e.retry_after_ms == 1500 and e.retry_after == 1.5


def test_unknown_code_and_garbage() -> None:
    e = error_from_body(418, b'{"error": {"code": "teapot", "message": "short and stout"}}')
    assert type(e) is AgentMeshError
    assert e.code == "teapot" and e.status == 418
    e = error_from_body(502, b"<html>bad gateway</html>")
    assert type(e) is AgentMeshError
    assert e.code == "http_502" and "bad gateway" in e.message
    e = error_from_body(500, b"")
    assert e.code == "http_500"


# The client over a mock transport


class FakeNode:
    """Answers like a node; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = {}

    def route(
        self, method: str, path: str
    ) -> Callable[[Callable[[httpx.Request], httpx.Response]], None]:
        def deco(f: Callable[[httpx.Request], httpx.Response]) -> None:
            self.routes[(method, path)] = f

        return deco

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return err(401, "unauthorized")
        f = self.routes.get((request.method, request.url.path))
        if f is None:
            return err(404, "not_found", "no such route")
        return f(request)

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def err(status: int, code: str, message: str = "", **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


def ok(data: Any) -> httpx.Response:
    return httpx.Response(200, json=data)


def receipt(mid: str = HEX, to: str = AMID_B, path: str = "direct_quic") -> dict[str, Any]:
    return {"id": mid, "to": to, "path": path, "knocked": True, "session": "ab" * 16}


def message(mid: str, **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "id": mid,
        "from": AMID_B,
        "session": "cd" * 16,
        "seq": 1,
        "ts_ms": 1700000000000,
        "payload": {"text": "hi"},
        "path": "direct_quic",
        "kind": "message",
        "deliveries": 1,
    }
    m.update(over)
    return m


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def client(node: FakeNode) -> Client:
    return Client("http://127.0.0.1:41234", TOKEN, amid=AMID_A, transport=httpx.MockTransport(node))


def test_send_posts_and_parses_the_receipt(node: FakeNode, client: Client) -> None:
    node.route("POST", "/v1/send")(lambda r: ok({"receipt": receipt()}))
    r = client.send(AMID_B, {"text": "hello"})
    assert r == agentmesh.Receipt(HEX, AMID_B, "direct_quic", True, "ab" * 16)
    assert node.body() == {"to": AMID_B, "payload": {"text": "hello"}}
    req = node.requests[-1]
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert "origin" not in req.headers and "referer" not in req.headers
    assert req.url.host == "127.0.0.1"
    # A string is sent as {"text": ...}; capability and wait go along.
    node.route("POST", "/v1/send")(lambda r: ok({"id": HEX}))
    assert client.send(AMID_B, "hey", capability="chat/x", wait=False) == HEX
    assert node.body() == {
        "to": AMID_B,
        "payload": {"text": "hey"},
        "capability": "chat/x",
        "wait": False,
    }


def test_errors_are_raised_as_their_class(node: FakeNode, client: Client) -> None:
    node.route("POST", "/v1/send")(
        lambda r: err(403, "rejected", "rejected by recipient: blocked", reason="blocked")
    )
    with pytest.raises(Rejected) as e:
        client.send(AMID_B, {})
    assert e.value.reason == "blocked" and e.value.status == 403
    with pytest.raises(NotFound):
        client.call("GET", "/v1/nope")
    bad = Client("http://127.0.0.1:41234", "wrong", transport=httpx.MockTransport(node))
    with pytest.raises(agentmesh.Unauthorized):
        bad.status()


def test_a_node_that_does_not_answer() -> None:
    c = Client("http://127.0.0.1:9", TOKEN, timeout=5)
    with pytest.raises(NodeNotRunning):
        c.status()


def test_request_reply_end_stream(node: FakeNode, client: Client) -> None:
    node.route("POST", "/v1/request")(
        lambda r: ok({"reply": message("11" * 16, kind="reply", reply_to=HEX)})
    )
    rep = client.request(AMID_B, {"q": 1}, timeout=2.5)
    assert rep.kind == "reply" and rep.reply_to == HEX and rep.from_ == AMID_B
    assert node.body() == {"to": AMID_B, "payload": {"q": 1}, "timeout_ms": 2500}
    node.route("POST", "/v1/reply")(lambda r: ok({"receipt": receipt()}))
    rep.reply({"ok": True})
    assert node.body() == {"to": AMID_B, "id": "11" * 16, "payload": {"ok": True}}
    rep.reply("sure", same_session=True)
    assert node.body()["session"] == "cd" * 16
    node.route("POST", "/v1/end")(lambda r: ok({"session": "cd" * 16}))
    assert client.end(AMID_B) == "cd" * 16
    assert node.body() == {"amid": AMID_B}
    node.route("POST", "/v1/stream")(lambda r: ok({"chunks": 2, "bytes": 5}))
    res = client.stream(AMID_B, b"hello", chunk_size=4)
    assert res == agentmesh.StreamResult(chunks=2, bytes=5)
    assert node.body() == {"to": AMID_B, "data_base64": "aGVsbG8=", "chunk_size": 4}
    with pytest.raises(ValueError):
        client.stream(AMID_B)


def test_inbox_routes(node: FakeNode, client: Client) -> None:
    node.route("GET", "/v1/messages")(lambda r: ok({"messages": [message(HEX, deliveries=2)]}))
    msgs = client.messages(wait=5, max=10, lease=2)
    assert msgs[0].deliveries == 2 and msgs[0].payload == {"text": "hi"} and msgs[0].text == "hi"
    q = node.requests[-1].url.params
    assert (q["wait_ms"], q["max"], q["lease_ms"]) == ("5000", "10", "2000")
    client.messages(wait=999, max=1000, lease=0.1)
    q = node.requests[-1].url.params
    assert (q["wait_ms"], q["max"], q["lease_ms"]) == ("60000", "256", "1000")
    node.route("POST", "/v1/messages/ack")(
        lambda r: ok({"acked": len(json.loads(r.content)["ids"])})
    )
    node.route("POST", "/v1/messages/release")(lambda r: ok({"released": 1}))
    assert client.ack([msgs[0], "22" * 16]) == 2
    assert node.body() == {"ids": [HEX, "22" * 16]}
    assert msgs[0].release() == 1
    assert msgs[0].to_json()["from"] == AMID_B


def test_node_routes(node: FakeNode, client: Client) -> None:
    node.route("GET", "/v1/status")(
        lambda r: ok({"status": {"amid": AMID_A}, "inbox": {"ready": 2, "leased": 1}})
    )
    node.route("GET", "/v1/peers")(
        lambda r: ok({"peers": [{"amid": AMID_B, "path": "relayed", "sessions": 1}]})
    )
    node.route("GET", f"/v1/lookup/{AMID_B}")(lambda r: ok({"card": {"amid": AMID_B}}))
    node.route("POST", "/v1/close")(lambda r: ok({"closed": 2}))
    node.route("PUT", "/v1/presence")(lambda r: ok({}))
    node.route("POST", "/v1/block")(lambda r: ok({}))
    node.route("GET", "/v1/audit")(lambda r: ok({"audit": [], "verified": True}))
    assert client.status() == {"amid": AMID_A}
    (p,) = client.peers()
    assert (p.amid, p.path, p.sessions) == (AMID_B, "relayed", 1)
    assert client.inbox_counts() == {"ready": 2, "leased": 1}
    assert client.lookup(AMID_B) == {"amid": AMID_B}
    assert client.close_sessions(AMID_B) == 2
    client.presence("dnd")
    assert node.requests[-1].method == "PUT" and node.body() == {"state": "dnd"}
    with pytest.raises(ValueError):
        client.presence("asleep")
    client.block(AMID_B)
    assert client.audit(peer=AMID_B, verify=True)["verified"] is True
    assert node.requests[-1].url.params["verify"] == "true"


def test_bad_answers_are_bad_responses(node: FakeNode, client: Client) -> None:
    node.route("GET", "/v1/status")(lambda r: httpx.Response(200, text="hello"))
    with pytest.raises(BadResponse):
        client.status()
    node.route("POST", "/v1/send")(lambda r: ok({"receipt": {"id": HEX}}))
    with pytest.raises(BadResponse):
        client.send(AMID_B, {})


def test_async_client(node: FakeNode) -> None:
    node.route("POST", "/v1/send")(lambda r: ok({"receipt": receipt()}))
    node.route("GET", "/v1/messages")(lambda r: ok({"messages": [message(HEX, kind="request")]}))
    node.route("POST", "/v1/reply")(lambda r: ok({"receipt": receipt()}))
    node.route("GET", "/v1/events")(
        lambda r: ok(
            {"events": [{"id": 3, "ts_ms": 1, "event": {"event": "x"}}], "last_id": 3, "dropped": 0}
        )
    )

    async def main() -> None:
        async with AsyncClient(
            "http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(node)
        ) as c:
            r = await c.send(AMID_B, {"a": 1})
            assert r.path == "direct_quic"
            (m,) = await c.messages(wait=1)
            assert m.is_request
            await m.areply({"b": 2})
            assert node.body() == {"to": AMID_B, "id": HEX, "payload": {"b": 2}}
            with pytest.raises(TypeError):
                m.reply({})
            batch = await c.events(since=2)
            assert batch.last_id == 3 and batch.events[0].kind == "x"
            with pytest.raises(NotFound):
                await c.call("GET", "/v1/nope")

    asyncio.run(main())


# The Agent over a mock transport


class FakeInbox:
    """A node's inbox: leases, acks, releases."""

    def __init__(self, node: FakeNode, msgs: list[dict[str, Any]]) -> None:
        self.waiting = list(msgs)
        self.acked: list[str] = []
        self.released: list[str] = []
        node.route("GET", "/v1/messages")(self.get)
        node.route("POST", "/v1/messages/ack")(self.ack)
        node.route("POST", "/v1/messages/release")(self.release)

    def get(self, r: httpx.Request) -> httpx.Response:
        out, self.waiting = self.waiting, []
        return ok({"messages": out})

    def ack(self, r: httpx.Request) -> httpx.Response:
        ids = json.loads(r.content)["ids"]
        self.acked += ids
        return ok({"acked": len(ids)})

    def release(self, r: httpx.Request) -> httpx.Response:
        ids = json.loads(r.content)["ids"]
        self.released += ids
        return ok({"released": len(ids)})


def test_handlers_ack_or_release(node: FakeNode, client: Client) -> None:
    inbox = FakeInbox(node, [message("01" * 16), message("02" * 16, payload={"text": "boom"})])
    agent = Agent(client, name="alice")
    seen: list[str] = []

    @agent.on_message
    def handle(msg: Message) -> None:
        seen.append(msg.id)
        if msg.text == "boom":
            raise RuntimeError("handler failed")

    assert agent.process_pending() == 1
    assert seen == ["01" * 16, "02" * 16]
    assert inbox.acked == ["01" * 16]
    assert inbox.released == ["02" * 16]


def test_handlers_run_in_background(node: FakeNode, client: Client) -> None:
    inbox = FakeInbox(node, [message("01" * 16)])
    agent = Agent(client, name="alice")
    got: list[Message] = []
    agent.on_message(got.append)
    with agent.run_in_background(poll=0.05) as runner:
        for _ in range(100):
            if inbox.acked:
                break
            import time

            time.sleep(0.02)
        assert runner.running
    assert not runner.running
    assert inbox.acked == ["01" * 16] and got[0].from_ == AMID_B


def test_no_handler(client: Client) -> None:
    with pytest.raises(RuntimeError):
        Agent(client).process_pending()


def test_events_resume_where_they_stopped(node: FakeNode, client: Client) -> None:
    log: list[dict[str, Any]] = [
        {"id": i, "ts_ms": i, "event": {"event": "e", "n": i}} for i in range(1, 8)
    ]
    asked: list[str | None] = []

    def events(r: httpx.Request) -> httpx.Response:
        since = r.url.params.get("since")
        asked.append(since)
        start = int(since) if since is not None else 0
        out = [e for e in log if int(e["id"]) > start][:3]
        return ok({"events": out, "last_id": out[-1]["id"] if out else start, "dropped": 0})

    node.route("GET", "/v1/events")(events)
    agent = Agent(client)
    first = []
    for e in agent.events(wait=0):
        first.append(e.id)
        if len(first) == 4:
            break
    assert first == [1, 2, 3, 4] and agent.last_event_id == 4
    # A new iterator (a new connection) resumes after the last event yielded.
    rest = [e.id for e in agent.events(wait=0, idle_timeout=0.2)]
    assert rest == [5, 6, 7]
    assert asked[0] is None and "4" in asked
    assert [e.id for e in agent.events(since=5, wait=0, idle_timeout=0.1)] == [6, 7]


def test_events_count_dropped(node: FakeNode, client: Client) -> None:
    answers = [
        {
            "events": [{"id": 5000, "ts_ms": 0, "event": {"event": "x"}}],
            "last_id": 5000,
            "dropped": 7,
        },
    ]
    node.route("GET", "/v1/events")(
        lambda r: ok(answers.pop(0) if answers else {"events": [], "last_id": 5000, "dropped": 0})
    )
    agent = Agent(client)
    assert [e.id for e in agent.events(since=1, wait=0, idle_timeout=0.1)] == [5000]
    assert agent.events_dropped == 7


def test_a_gap_without_events_is_counted_once(node: FakeNode, client: Client) -> None:
    """An id from an earlier run of the node: the node answers the gap
    before any event of its own run; the next poll goes on past it."""
    asked: list[str | None] = []

    def events(r: httpx.Request) -> httpx.Response:
        since = r.url.params.get("since")
        asked.append(since)
        if since == "3":
            return ok({"events": [], "last_id": 9, "dropped": 6})
        return ok({"events": [], "last_id": 9, "dropped": 0})

    node.route("GET", "/v1/events")(events)
    agent = Agent(client)
    assert list(agent.events(since=3, wait=0, idle_timeout=0.2)) == []
    assert agent.events_dropped == 6
    assert agent.last_event_id == 9
    assert asked[0] == "3" and len(asked) > 1 and set(asked[1:]) == {"9"}


def test_agent_accepts_agents_as_recipients(node: FakeNode, client: Client) -> None:
    node.route("POST", "/v1/send")(lambda r: ok({"receipt": receipt()}))
    alice = Agent(client, name="alice")
    bob = Agent(
        Client("http://127.0.0.1:2", TOKEN, amid=AMID_B, transport=httpx.MockTransport(node)),
        name="bob",
    )
    alice.send(bob, {"x": 1})
    assert node.body()["to"] == AMID_B
    with pytest.raises(TypeError):
        alice.send(42, {})  # type: ignore[call-overload]


# Finding the binaries


def test_find_binary_in_bin_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exe = tmp_path / "agentmesh-sim"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("AGENTMESH_BIN_DIR", str(tmp_path))
    assert agentmesh.find_binary("agentmesh-sim") == exe


def test_missing_binary_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTMESH_BIN_DIR", str(tmp_path))
    with pytest.raises(agentmesh.BinaryNotFound) as e:
        agentmesh.find_binary("no-such-agentmesh-binary")
    assert "AGENTMESH_BIN_DIR" in e.value.message


def test_start_makes_a_passphrase_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMESH_PASSPHRASE", raising=False)
    monkeypatch.delenv("AGENTMESH_PASSPHRASE_FILE", raising=False)
    env = Agent._passphrase_env(tmp_path, None)
    f = Path(env["AGENTMESH_PASSPHRASE_FILE"])
    assert f.read_text().strip() and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert Agent._passphrase_env(tmp_path, None) == env  # the same one again
    assert Agent._passphrase_env(tmp_path, "pw") == {"AGENTMESH_PASSPHRASE": "pw"}
    other = tmp_path / "other"
    other.mkdir()
    (other / "identity.keystore").write_bytes(b"x")
    with pytest.raises(AgentMeshError):
        Agent._passphrase_env(other, None)


def test_path_kinds_are_those_of_the_contract() -> None:
    from agentmesh.models import PATH_KINDS

    doc = doc_path()
    if not doc.exists():
        pytest.skip(f"{doc} is not here (installed outside the source tree)")
    text = doc.read_text()
    para = text.split("A receipt is", 1)[1].split("###", 1)[0]
    documented = re.findall(r"`([a-z_]+)`", para.split("is one of", 1)[1])
    assert tuple(documented) == PATH_KINDS
    r = agentmesh.Receipt.from_json(receipt(path="direct_web_rtc"))
    assert r.path == "direct_web_rtc"
    assert Message.from_json({**message(HEX), "path": None}).path == "other"


def test_socket_only_api_json(tmp_path: Path) -> None:
    sock = str(tmp_path / "agentmesh.sock")
    (tmp_path / "api.json").write_text(json.dumps({"token": "t", "socket": sock, "amid": AMID_A}))
    info = ApiInfo.load(tmp_path)
    assert info.url is None and info.socket == sock
    c = Client.from_info(info)
    assert "unix socket" in c.url
    with pytest.raises(NodeNotRunning):
        c.status()
    (tmp_path / "api.json").write_text(json.dumps({"token": "t"}))
    with pytest.raises(BadResponse):
        ApiInfo.load(tmp_path)


def test_messages_as_plain_data() -> None:
    import dataclasses

    c = Client("http://127.0.0.1:1", TOKEN)
    m = Message.from_json(message(HEX), c)
    d = dataclasses.asdict(m)
    assert d["from_"] == AMID_B and "_client" not in d
    assert m._client is c
    c.close()


def test_event_stream_over_sse(node: FakeNode, client: Client) -> None:
    body = (
        ": keep-alive\n\n"
        "event: dropped\n"
        'data: {"event": "dropped", "count": 4}\n\n'
        "id: 7\n"
        'data: {"id": 7, "ts_ms": 70, "event": {"event": "delivered", "id": "x"}}\n\n'
        "id: 8\n"
        'data: {"id": 8, "ts_ms": 80,\n'
        'data:  "event": {"event": "connected"}}\n\n'
    )
    node.route("GET", "/v1/events/stream")(
        lambda r: httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
    )
    events = list(client.event_stream(since=3))
    assert node.requests[-1].url.params["since"] == "3"
    assert [(e.id, e.kind) for e in events] == [(0, "dropped"), (7, "delivered"), (8, "connected")]
    assert events[0]["count"] == 4 and events[1].ts_ms == 70

    async def main() -> list[int]:
        async with AsyncClient(
            "http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(node)
        ) as c:
            return [e.id async for e in c.event_stream()]

    assert asyncio.run(main()) == [0, 7, 8]
    node.route("GET", "/v1/events/stream")(lambda r: err(401, "unauthorized"))
    with pytest.raises(agentmesh.Unauthorized):
        next(client.event_stream())


def test_policy_check(node: FakeNode, client: Client) -> None:
    answers = [
        {"decision": {"reject": {"reason": "intent_denied"}}, "policy_hash": "ab"},
        {"decision": {"accept": {"session": "00" * 16, "expires_ms": 1}}, "policy_hash": "cd"},
    ]
    node.route("POST", "/v1/policy/check")(lambda r: ok(answers.pop(0)))
    agent = Agent(client)
    c = agent.check_policy("finance/payments", from_=AMID_B, tier="verified", policy="x = 1")
    assert (c.accepted, c.reason, c.policy_hash) == (False, "intent_denied", "ab")
    assert node.body() == {
        "capability": "finance/payments",
        "from": AMID_B,
        "tier": "verified",
        "policy": "x = 1",
    }
    c = client.check_policy("communication/messaging", action="send", reputation=0.5)
    assert c.accepted and c.reason is None
    assert node.body() == {
        "capability": "communication/messaging",
        "action": "send",
        "reputation": 0.5,
    }


def test_registry_policy_dashboard_and_metrics_routes(node: FakeNode, client: Client) -> None:
    node.route("POST", "/v1/registry/register")(
        lambda r: ok({"registration": {"amid": AMID_A, "created": True, "tier": "anonymous"}})
    )
    agent = Agent(client, name="alice")
    assert client.register("alice", ["chat", "weather/forecast"])["created"] is True
    assert node.body() == {"name": "alice", "capabilities": ["chat", "weather/forecast"]}
    agent.register()  # the agent's name, the card's capabilities
    assert node.body() == {"name": "alice"}
    with pytest.raises(TypeError):
        client.register("alice", "chat")

    entry = {"amid": AMID_B, "capabilities": ["weather/forecast"]}
    node.route("GET", "/v1/registry/search")(
        lambda r: ok({"results": {"count": 1, "results": [entry]}})
    )
    assert client.search("weather") == [entry]
    assert dict(node.requests[-1].url.params) == {"capability": "weather"}
    agent.search("weather", tier_min="verified", reputation_min=0.5, limit=3)
    assert dict(node.requests[-1].url.params) == {
        "capability": "weather",
        "tier_min": "verified",
        "reputation_min": "0.5",
        "limit": "3",
    }
    node.route("GET", "/v1/registry/search")(lambda r: ok({"results": {"count": 0}}))
    with pytest.raises(BadResponse):
        client.search("weather")

    node.route("PUT", "/v1/policy")(lambda r: ok({"policy_hash": "ef"}))
    assert agent.set_policy('preset = "strict"\n') == "ef"
    assert node.body() == {"policy": 'preset = "strict"\n'}
    # Routes that take no body get none (the node leaves a body unread).
    node.route("POST", "/v1/policy/reload")(lambda r: ok({"policy_hash": "01"}))
    node.route("POST", "/v1/kill/clear")(lambda r: ok({}))
    assert client.reload_policy() == "01"
    assert node.requests[-1].content == b""
    client.kill_clear()
    assert node.requests[-1].content == b""

    url = "http://127.0.0.1:41234/login?code=" + "ab" * 32
    node.route("POST", "/v1/dashboard/link")(lambda r: ok({"url": url, "expires_in_s": 120}))
    assert agent.dashboard_link() == agentmesh.DashboardLink(url, 120)
    assert node.requests[-1].content == b""

    text = "# TYPE agentmesh_messages_received_total counter\nagentmesh_messages_received_total 3\n"
    node.route("GET", "/metrics")(
        lambda r: httpx.Response(200, text=text, headers={"content-type": "text/plain"})
    )
    assert agent.metrics() == text

    async def main() -> None:
        async with AsyncClient(
            "http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(node)
        ) as c:
            assert await c.metrics() == text
            assert (await c.dashboard_link()).url == url
            assert await c.set_policy("x") == "ef"
            assert node.body() == {"policy": "x"}
            assert (await c.register("bob"))["amid"] == AMID_A
            with pytest.raises(BadResponse):
                await c.search("weather")

    asyncio.run(main())


# Message schemas

FORECAST = {"type": "request", "action": "forecast", "params": {"city": "Oslo"}}
REQUEST_SCHEMA = {"$id": "agentmesh/request@1", "type": "object", "required": ["type", "action"]}


def test_send_and_request_name_a_schema(node: FakeNode, client: Client) -> None:
    node.route("POST", "/v1/send")(lambda r: ok({"receipt": receipt()}))
    node.route("POST", "/v1/request")(
        lambda r: ok({"reply": message("11" * 16, kind="reply", reply_to=HEX)})
    )
    client.send(AMID_B, FORECAST, capability="weather/forecast", schema="agentmesh/request@1")
    assert node.body() == {
        "to": AMID_B,
        "payload": FORECAST,
        "capability": "weather/forecast",
        "schema": "agentmesh/request@1",
    }
    # No schema: none in the body (the recipient decides what that means).
    client.send(AMID_B, FORECAST, capability="weather/forecast")
    assert "schema" not in node.body()
    node.route("POST", "/v1/send")(lambda r: ok({"id": HEX}))
    assert client.send(AMID_B, "hi", schema="agentmesh/text@1", wait=False) == HEX
    assert node.body() == {
        "to": AMID_B,
        "payload": {"text": "hi"},
        "schema": "agentmesh/text@1",
        "wait": False,
    }
    client.request(AMID_B, FORECAST, capability="weather/forecast", schema="x-acme/q@2", timeout=3)
    assert node.body() == {
        "to": AMID_B,
        "payload": FORECAST,
        "timeout_ms": 3000,
        "capability": "weather/forecast",
        "schema": "x-acme/q@2",
    }
    with pytest.raises(TypeError):
        client.send(AMID_B, {}, schema=1)  # type: ignore[call-overload]

    # The Agent passes it along, with or without waiting.
    agent = Agent(client, name="alice")
    node.route("POST", "/v1/send")(lambda r: ok({"receipt": receipt()}))
    agent.send(AMID_B, FORECAST, capability="weather/forecast", schema="agentmesh/request@1")
    assert node.body()["schema"] == "agentmesh/request@1" and "wait" not in node.body()
    node.route("POST", "/v1/send")(lambda r: ok({"id": HEX}))
    assert agent.send(AMID_B, FORECAST, schema="agentmesh/request@1", wait=False) == HEX
    assert node.body()["schema"] == "agentmesh/request@1" and node.body()["wait"] is False
    agent.request(AMID_B, FORECAST, schema="agentmesh/request@1", timeout=1)
    assert node.body()["schema"] == "agentmesh/request@1"

    async def main() -> None:
        async with AsyncClient(
            "http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(node)
        ) as c:
            assert await c.send(AMID_B, FORECAST, schema="agentmesh/request@1", wait=False) == HEX
            assert node.body()["schema"] == "agentmesh/request@1"
            await c.request(AMID_B, FORECAST, capability="weather/forecast", schema="a/b@1")
            assert node.body()["schema"] == "a/b@1"

    asyncio.run(main())


def test_schemas_and_a_peers_accepted_schemas(node: FakeNode, client: Client) -> None:
    answer = {
        "schemas": [
            {"id": "agentmesh/text@1", "schema": {"type": "object"}},
            {"id": "agentmesh/request@1", "schema": REQUEST_SCHEMA},
        ],
        "accepted": {"weather/forecast": ["agentmesh/request@1"]},
    }
    node.route("GET", "/v1/schemas")(lambda r: ok(answer))
    cat = client.schemas()
    assert isinstance(cat, agentmesh.SchemaCatalog)
    assert node.requests[-1].method == "GET" and node.requests[-1].content == b""
    assert cat.ids == ["agentmesh/text@1", "agentmesh/request@1"]
    assert cat.schemas["agentmesh/request@1"] == REQUEST_SCHEMA
    assert cat.accepted == {"weather/forecast": ["agentmesh/request@1"]}
    assert cat.accepts("weather/forecast") == ["agentmesh/request@1"]
    assert cat.accepts("chat") == []
    assert cat.raw == answer
    assert set(agentmesh.STANDARD_SCHEMAS) >= set(cat.ids)
    # Nothing accepted: an empty object.
    node.route("GET", "/v1/schemas")(lambda r: ok({"schemas": [], "accepted": {}}))
    assert Agent(client).schemas() == agentmesh.SchemaCatalog(schemas={}, accepted={})
    bad_answers: list[dict[str, Any]] = [
        {"accepted": {}},
        {"schemas": [{"id": "a/b@1"}], "accepted": {}},
        {"schemas": [], "accepted": {"chat": "agentmesh/text@1"}},
    ]
    for bad in bad_answers:

        def bad_answer(r: httpx.Request, bad: dict[str, Any] = bad) -> httpx.Response:
            return ok(bad)

        node.route("GET", "/v1/schemas")(bad_answer)
        with pytest.raises(BadResponse):
            client.schemas()

    card: dict[str, Any] = {"amid": AMID_B, "capabilities": ["weather/forecast"]}
    node.route("GET", f"/v1/lookup/{AMID_B}")(lambda r: ok({"card": card}))
    assert client.schemas_of(AMID_B) == {}  # absent: any payload
    card["schemas"] = {"weather/forecast": ["agentmesh/request@1"]}
    assert client.schemas_of(AMID_B) == {"weather/forecast": ["agentmesh/request@1"]}
    bob = Agent(
        Client("http://127.0.0.1:2", TOKEN, amid=AMID_B, transport=httpx.MockTransport(node)),
        name="bob",
    )
    assert Agent(client).schemas_of(bob) == {"weather/forecast": ["agentmesh/request@1"]}
    assert agentmesh.card_schemas({"amid": AMID_B}) == {}

    async def main() -> None:
        async with AsyncClient(
            "http://127.0.0.1:1", TOKEN, transport=httpx.MockTransport(node)
        ) as c:
            node.route("GET", "/v1/schemas")(lambda r: ok(answer))
            assert (await c.schemas()).accepts("weather/forecast") == ["agentmesh/request@1"]
            assert await c.schemas_of(AMID_B) == {"weather/forecast": ["agentmesh/request@1"]}

    asyncio.run(main())


@pytest.mark.parametrize("reason", ["unsupported_schema", "schema_invalid"])
def test_schema_refusals(node: FakeNode, client: Client, reason: str) -> None:
    node.route("POST", "/v1/send")(
        lambda r: err(403, "rejected", f"rejected by recipient: {reason}", reason=reason)
    )
    with pytest.raises(Rejected) as e:
        client.send(AMID_B, {}, capability="weather/forecast")
    assert e.value.reason == reason
    node.route("POST", "/v1/request")(
        lambda r: err(400, "invalid_payload", "the payload does not conform to agentmesh/request@1")
    )
    with pytest.raises(agentmesh.InvalidPayload) as bad:
        client.request(AMID_B, {"type": "request"}, schema="agentmesh/request@1")
    assert bad.value.status == 400 and "conform" in bad.value.message
