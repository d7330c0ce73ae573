"""Against real nodes: a LocalMesh of processes (bootstrap, relay, agents)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import agentmesh
from agentmesh import (
    Agent,
    AsyncClient,
    Client,
    LocalMesh,
    Message,
    Receipt,
    error_from_body,
)

pytestmark = pytest.mark.integration

PATHS = set(agentmesh.models.PATH_KINDS)
WAIT = 60.0


def drain(agent: Agent) -> None:
    """Acknowledges everything waiting in an agent's inbox."""
    while msgs := agent.messages(wait=0, max=256, lease=5):
        agent.ack(msgs)


def wait_message(
    agent: Agent, pred: Callable[[Message], bool], timeout: float = WAIT, ack: bool = True
) -> Message:
    """The first message that satisfies ``pred``; others met meanwhile are
    acknowledged (dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = max(0.0, deadline - time.monotonic())
        for m in agent.messages(wait=min(5.0, left), max=256, lease=30):
            if pred(m):
                if ack:
                    m.ack()
                return m
            m.ack()
    raise AssertionError(f"{agent.name} got no such message in {timeout} s")


def test_agents_are_up(mesh: LocalMesh) -> None:
    assert len(mesh.agents) == 4
    amids = {a.amid for a in mesh.agents}
    assert len(amids) == 4
    for a in mesh.agents:
        info = agentmesh.ApiInfo.load(a.data_dir)
        assert info.amid == a.amid and info.version == 1
        assert info.url is not None and info.url.startswith("http://127.0.0.1:")
        assert isinstance(a.status(), dict)
    assert mesh["bob"] is mesh.agents[1]


def test_send_and_receive(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    drain(bob)
    payload = {"text": "hello bob", "n": 1, "nested": {"list": [1, 2, 3]}}
    r = alice.send(bob, payload)
    assert isinstance(r, Receipt)
    assert r.to == bob.amid
    assert r.path in PATHS, r.path
    assert r.knocked is True  # the first message to bob opened the session
    assert len(r.id) == 32 and len(r.session) == 32
    got = wait_message(bob, lambda m: m.id == r.id)
    assert got.payload == payload
    assert got.from_ == alice.amid and got.sender == alice.amid
    assert got.session == r.session
    assert got.kind == "message" and got.deliveries == 1
    assert got.path in PATHS
    # The session is cached now: no KNOCK.
    r2 = alice.send(bob.amid, "again")
    assert r2.knocked is False and r2.session == r.session
    got = wait_message(bob, lambda m: m.id == r2.id)
    assert got.payload == {"text": "again"} and got.text == "again"


def test_on_message_handler(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    drain(bob)
    seen: queue.Queue[Message] = queue.Queue()
    bob._handlers.clear()
    bob.on_message(seen.put)
    with bob.run_in_background(poll=1.0):
        r = alice.send(bob, {"text": "to the handler"})
        m = seen.get(timeout=WAIT)
        while m.id != r.id:
            m = seen.get(timeout=WAIT)
        assert m.payload == {"text": "to the handler"} and m.from_ == alice.amid
        time.sleep(0.5)  # the loop acknowledges after the handler returned
    bob._handlers.clear()
    # Acknowledged: not handed out again.
    assert all(x.id != r.id for x in bob.messages(wait=1.5, max=256))


def test_a_failing_handler_gets_the_message_again(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    drain(bob)
    r = alice.send(bob, {"text": "fail once"})
    calls: list[Message] = []

    @bob.on_message
    def flaky(m: Message) -> None:
        calls.append(m)
        if m.id == r.id and m.deliveries == 1:
            raise RuntimeError("not now")

    try:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any(
            m.id == r.id and m.deliveries == 2 for m in calls
        ):
            bob.process_pending(wait=2.0)
    finally:
        bob._handlers.clear()
    mine = [m.deliveries for m in calls if m.id == r.id]
    assert mine == [1, 2]


def test_request_reply(mesh: LocalMesh) -> None:
    alice, carol = mesh["alice"], mesh["carol"]
    drain(carol)

    @carol.on_message
    def serve(m: Message) -> None:
        if m.is_request:
            m.reply({"echo": m.payload, "by": "carol"})

    try:
        with carol.run_in_background(poll=1.0):
            reply = alice.request(carol, {"q": "ping"}, timeout=30)
    finally:
        carol._handlers.clear()
    assert reply.kind == "reply"
    assert reply.from_ == carol.amid
    assert reply.payload == {"echo": {"q": "ping"}, "by": "carol"}
    assert reply.reply_to is not None and len(reply.reply_to) == 32


def test_request_without_reply_times_out(mesh: LocalMesh) -> None:
    alice, carol = mesh["alice"], mesh["carol"]
    with pytest.raises(agentmesh.ReplyTimeout) as e:
        alice.request(carol, {"q": "anyone?"}, timeout=2)
    assert e.value.status == 504
    drain(carol)


def test_end_conversation(mesh: LocalMesh) -> None:
    alice, dave = mesh["alice"], mesh["dave"]
    r1 = alice.send(dave, {"text": "a short chat"})
    assert alice.end(dave) == r1.session
    deadline = time.monotonic() + WAIT
    closed = False
    while not closed and time.monotonic() < deadline:
        closed = any(
            e.kind == "session_closed" and e.get("session") == r1.session
            for e in alice.events(since=0, wait=1, idle_timeout=1)
        )
    assert closed, "no session_closed event for the ended session"
    # A new conversation: a new KNOCK, a new session.
    r2 = alice.send(dave, {"text": "hello again"})
    assert r2.knocked is True and r2.session != r1.session
    drain(dave)


def test_reply_in_an_ended_session(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    drain(bob)
    r = alice.send(bob, {"text": "answer me in this session"})
    m = wait_message(bob, lambda m: m.id == r.id)
    assert alice.end(bob) == r.session
    with pytest.raises(agentmesh.NoSession) as e:
        m.reply({"text": "too late"}, same_session=True)
    assert e.value.status == 409
    # Without the session, the reply opens a new conversation.
    rep = m.reply({"text": "here anyway"})
    assert rep.to == alice.amid and rep.session != r.session
    drain(alice)


def test_stream_of_bytes(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    data = os.urandom(100_000) + b"end"
    res = alice.stream(bob, data, chunk_size=16 * 1024)
    assert res.bytes == len(data)
    assert res.chunks == -(-len(data) // (16 * 1024))
    digest = hashlib.sha256(data).hexdigest()
    line = mesh.process(bob).wait_for(
        lambda v: v.get("event") == "stream_ended" and v.get("sha256") == digest,
        WAIT,
        "the stream's end",
    )
    assert line["bytes"] == len(data) and line["from"] == alice.amid


def test_stream_from_a_file(mesh: LocalMesh, tmp_path: Path) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    f = tmp_path / "blob.bin"
    f.write_bytes(b"x" * 50_000)
    res = alice.stream(bob, path=f)
    assert res.bytes == 50_000
    digest = hashlib.sha256(b"x" * 50_000).hexdigest()
    mesh.process(bob).wait_for(lambda v: v.get("sha256") == digest, WAIT, "the stream's end")


def test_events_resume_after_a_disconnect(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    assert alice.data_dir is not None
    first = Agent.attach(alice.data_dir)
    seen = [e.id for e in first.events(wait=0.5, idle_timeout=1.0)]
    assert seen, "a node that has run has events"
    assert seen == list(range(seen[0], seen[0] + len(seen))), "ids are contiguous"
    last = first.last_event_id
    assert last == seen[-1]
    first.client.close()  # the app goes away

    # Meanwhile, things happen.
    sent = [alice.send(bob, {"text": f"while away {i}"}) for i in range(3)]

    # A new connection resumes after the last event it handled.
    again = Agent.attach(alice.data_dir)
    resumed = []
    for e in again.events(since=last, wait=2, idle_timeout=3):
        resumed.append(e)
    ids = [e.id for e in resumed]
    assert ids and ids[0] == last + 1
    assert ids == list(range(last + 1, last + 1 + len(ids))), "no event lost"
    delivered = {e.get("id") for e in resumed if e.kind == "delivered"}
    assert {r.id for r in sent} <= delivered
    # The same agent resumes by itself where its last iterator stopped.
    after = again.last_event_id
    assert after is not None
    r = alice.send(bob, {"text": "one more"})
    nxt = next(again.events(wait=10))
    assert nxt.id == after + 1
    more = [nxt, *again.events(wait=2, idle_timeout=2)]
    assert any(e.kind == "delivered" and e.get("id") == r.id for e in more)
    again.client.close()
    drain(bob)


def test_event_stream(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    start = alice.client.events(wait=0).last_id
    r = alice.send(bob, {"text": "seen over SSE"})
    ids = []
    for e in alice.client.event_stream(since=start):
        ids.append(e.id)
        if e.kind == "delivered" and e.get("id") == r.id:
            break
    assert ids == list(range(start + 1, start + 1 + len(ids)))
    drain(bob)


def test_send_nowait_reports_by_event(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    start = alice.client.events(wait=0).last_id
    mid = alice.send(bob, {"text": "fire and forget"}, wait=False)
    assert isinstance(mid, str) and len(mid) == 32
    found = False
    for e in alice.events(since=start, wait=5, idle_timeout=WAIT):
        if e.kind == "delivered" and e.get("id") == mid:
            found = True
            break
    assert found
    wait_message(bob, lambda m: m.id == mid)


CRASHING_READER = """
import json, os, sys
from agentmesh import Client
c = Client.from_data_dir(sys.argv[1])
msgs = c.messages(wait=20, max=256, lease=1)
print(json.dumps([m.id for m in msgs]), flush=True)
os._exit(3)  # dies before acknowledging anything
"""


def test_an_app_that_dies_before_ack_gets_the_message_again(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    drain(bob)
    r = alice.send(bob, {"text": "handle me exactly once"})
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_READER, str(bob.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert r.id in json.loads(proc.stdout)
    # Its lease (1 s) ends; a second reader gets the message.
    m = wait_message(bob, lambda m: m.id == r.id, timeout=30)
    assert m.deliveries == 2
    assert m.payload == {"text": "handle me exactly once"}
    # Acknowledged now: gone.
    time.sleep(1.2)
    assert all(x.id != r.id for x in bob.messages(wait=0.5, max=256))


def test_release_hands_out_again_at_once(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    drain(bob)
    r = alice.send(bob, {"text": "released"})
    m = wait_message(bob, lambda m: m.id == r.id, ack=False)
    assert m.release() == 1
    again = wait_message(bob, lambda m: m.id == r.id, timeout=5)
    assert again.deliveries == 2


def test_peers_lookup_status_presence(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    alice.send(bob, {"text": "so we know each other"})
    peers = {p.amid: p for p in alice.peers()}
    assert bob.amid in peers
    card = alice.lookup(bob)
    assert isinstance(card, dict) and card
    assert bob.amid in json.dumps(card)
    bob.presence("away")
    bob.presence("online")
    st = alice.status()
    assert st["amid"] == alice.amid
    counts = alice.client.inbox_counts()
    assert set(counts) == {"ready", "leased"}
    assert peers[bob.amid].sessions >= 1
    assert isinstance(alice.sessions(), list)
    assert isinstance(alice.client.openapi().get("paths"), dict)
    drain(bob)


# Errors, each as its exception class.


def test_invalid_amid(mesh: LocalMesh) -> None:
    with pytest.raises(agentmesh.InvalidAmid) as e:
        mesh["alice"].send("not-an-amid", {"text": "?"})
    assert e.value.status == 400 and e.value.code == "invalid_amid"


def test_unknown_route(mesh: LocalMesh) -> None:
    with pytest.raises(agentmesh.NotFound) as e:
        mesh["alice"].client.call("GET", "/v1/no-such-route")
    assert e.value.status == 404


def test_wrong_method(mesh: LocalMesh) -> None:
    with pytest.raises(agentmesh.MethodNotAllowed):
        mesh["alice"].client.call("GET", "/v1/send")


def test_bad_token(mesh: LocalMesh) -> None:
    c = Client(mesh["alice"].client.url, "0" * 64)
    with pytest.raises(agentmesh.Unauthorized) as e:
        c.status()
    assert e.value.status == 401
    c.close()


def test_origin_header_is_refused(mesh: LocalMesh) -> None:
    info = agentmesh.ApiInfo.load(mesh["alice"].data_dir)
    r = httpx.get(
        f"{info.url}/v1/status",
        headers={"Authorization": f"Bearer {info.token}", "Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    e = error_from_body(r.status_code, r.content)
    assert isinstance(e, agentmesh.ForbiddenOrigin)
    r = httpx.get(
        f"{info.url}/v1/status",
        headers={"Authorization": f"Bearer {info.token}", "Referer": "http://evil.example/"},
    )
    assert isinstance(error_from_body(r.status_code, r.content), agentmesh.ForbiddenOrigin)


def test_foreign_host_is_refused(mesh: LocalMesh) -> None:
    info = agentmesh.ApiInfo.load(mesh["alice"].data_dir)
    r = httpx.get(
        f"{info.url}/v1/status",
        headers={"Authorization": f"Bearer {info.token}", "Host": "evil.example"},
    )
    assert r.status_code == 403
    assert isinstance(error_from_body(r.status_code, r.content), agentmesh.BadHost)


def test_malformed_json(mesh: LocalMesh) -> None:
    alice = mesh["alice"]
    with pytest.raises(agentmesh.BadRequest) as e:
        alice.client.call(
            "POST",
            "/v1/send",
            content=b'{"to": "am", "payload": ',
            headers={"Content-Type": "application/json"},
        )
    assert e.value.status == 400
    with pytest.raises(agentmesh.BadRequest):
        alice.client.call("POST", "/v1/send", json={"payload": {}})  # no "to"


def test_invalid_id(mesh: LocalMesh) -> None:
    with pytest.raises(agentmesh.InvalidId):
        mesh["alice"].ack(["not-hex"])


def test_body_over_one_mib(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    with pytest.raises(agentmesh.PayloadTooLarge) as e:
        alice.send(bob, {"text": "x" * (1024 * 1024 + 10)})
    assert e.value.status == 413


def test_blocked_sender_is_rejected_with_its_reason(mesh: LocalMesh) -> None:
    # dave has never written to carol: his first message is a KNOCK.
    carol, dave = mesh["carol"], mesh["dave"]
    carol.block(dave)
    with pytest.raises(agentmesh.Rejected) as e:
        dave.send(carol, {"text": "let me in"})
    assert e.value.reason == "blocked"
    assert e.value.status == 403 and e.value.code == "rejected"


def test_async_client(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]

    async def main() -> Receipt:
        async with AsyncClient.from_data_dir(alice.data_dir) as c:
            st = await c.status()
            assert isinstance(st, dict)
            r = await c.send(bob.amid, {"text": "from asyncio"})
            with pytest.raises(agentmesh.InvalidAmid):
                await c.send("nope", {})
            return r

    r = asyncio.run(main())
    m = wait_message(bob, lambda m: m.id == r.id)
    assert m.payload == {"text": "from asyncio"}


def test_unix_socket(mesh: LocalMesh) -> None:
    alice = mesh["alice"]
    info = agentmesh.ApiInfo.load(alice.data_dir)
    assert info.socket and Path(info.socket).exists()
    with Client.from_info(info, use_socket=True) as c:
        assert isinstance(c.status(), dict)


def test_agent_start_and_attach(mesh: LocalMesh, tmp_path: Path) -> None:
    d = tmp_path / "zed"
    zed = Agent.start(
        "zed",
        data_dir=d,
        bootstrap=mesh.bootstrap_addr,
        relays=[mesh.relay_addr],
        passphrase="correct horse battery staple",
    )
    try:
        assert zed.process is not None and zed.amid.startswith("am")
        # Starting it again attaches to the running node.
        same = Agent.start("zed", data_dir=d)
        assert same.process is None and same.amid == zed.amid
        attached = Agent.attach(d)
        assert attached.amid == zed.amid
        r = mesh["alice"].send(zed, {"text": "hi zed"})
        m = wait_message(attached, lambda m: m.id == r.id)
        assert m.from_ == mesh["alice"].amid
        rep = zed.send(mesh["alice"], "hi alice")
        assert rep.to == mesh["alice"].amid
    finally:
        zed.stop()
    assert not (d / "api.json").exists()
    with pytest.raises(agentmesh.NodeNotRunning):
        Agent.attach(d)
    with pytest.raises(agentmesh.NodeNotRunning):
        attached.status()
    # Same identity on the next start.
    again = Agent.start("zed", data_dir=d, passphrase="correct horse battery staple")
    try:
        assert again.amid == zed.amid
    finally:
        again.stop()


def test_raw_answers_follow_the_contract(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]
    raw = alice.client.call("POST", "/v1/send", json={"to": bob.amid, "payload": {"raw": 1}})
    assert set(raw) == {"receipt"}
    assert set(raw["receipt"]) == {"id", "to", "path", "knocked", "session"}
    assert raw["receipt"]["path"] in PATHS
    got = bob.client.call("GET", "/v1/messages", params={"wait_ms": 10000, "max": 256})
    mine = [m for m in got["messages"] if m["id"] == raw["receipt"]["id"]]
    assert mine and {"id", "from", "session", "seq", "ts_ms", "payload", "path", "kind"} <= set(
        mine[0]
    )
    assert mine[0]["deliveries"] == 1
    bob.ack([m["id"] for m in got["messages"]])
    st = alice.client.call("GET", "/v1/status")
    assert {"status", "inbox"} <= set(st) and {"ready", "leased"} <= set(st["inbox"])
    for p in alice.client.call("GET", "/v1/peers")["peers"]:
        assert {"amid", "path", "sessions"} <= set(p)


def test_a_detached_node_outlives_its_agent(mesh: LocalMesh, tmp_path: Path) -> None:
    d = tmp_path / "ivy"
    ivy = Agent.start("ivy", data_dir=d, bootstrap=mesh.bootstrap_addr, detach=True)
    proc = ivy.process
    assert proc is not None
    try:
        ivy.stop()  # the client goes; the node stays
        assert proc.alive
        again = Agent.start("ivy", data_dir=d)
        assert again.process is None and again.amid == ivy.amid
        again.stop()
        assert proc.alive
    finally:
        proc.terminate()
    assert not (d / "api.json").exists()
    assert any(v.get("event") == "started" for v in proc.lines())


MESH_SCRIPT = """
import json, os, signal, sys
from agentmesh import LocalMesh
m = LocalMesh(n=1)
pids = [m.process(n).pid for n in ("bootstrap", "relay", "alice")]
print(json.dumps({"pids": pids, "root": str(m.root)}), flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie waiting for its reaper is gone too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_the_mesh_ends_with_the_interpreter(how: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, how], capture_output=True, text=True, timeout=180
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(_gone(p) for p in out["pids"]):
        time.sleep(0.2)
    assert all(_gone(p) for p in out["pids"]), proc.stderr
    if how == "exit":
        assert proc.returncode == 0, proc.stderr
        assert not Path(out["root"]).exists()
    else:
        # Killed, the interpreter could not remove the data; its children
        # stopped all the same.
        shutil.rmtree(out["root"], ignore_errors=True)


def test_an_agent_added_with_an_a2a_gateway(mesh: LocalMesh) -> None:
    erin = mesh.add_agent("erin", extra_args=["--a2a", "127.0.0.1:0"])
    assert mesh["erin"] is erin
    assert erin.a2a_url is not None and erin.a2a_url.startswith("http://127.0.0.1:")
    r = httpx.get(f"{erin.a2a_url}/.well-known/agent-card.json", timeout=10)
    assert r.status_code == 200 and isinstance(r.json(), dict)
    got = mesh["alice"].send(erin, {"text": "welcome, erin"})
    assert wait_message(erin, lambda m: m.id == got.id).payload == {"text": "welcome, erin"}


def test_policy_check_dry_run(mesh: LocalMesh, tmp_path: Path) -> None:
    policy = '[[intent]]\ncapability = "finance/*"\naction = "*"\nallow = false\n'
    (tmp_path / "policy.toml").write_text(policy)
    quinn = Agent.start("quinn", data_dir=tmp_path / "quinn", policy=tmp_path / "policy.toml")
    try:
        refused = quinn.check_policy("finance/payments", from_=mesh["alice"])
        assert not refused.accepted and refused.reason == "intent_denied"
        assert quinn.check_policy("communication/messaging").accepted
        # A policy given for the check only: the one in force is untouched.
        assert quinn.check_policy("finance/payments", policy='preset = "default"\n').accepted
        assert not quinn.check_policy("finance/payments").accepted
        assert refused.policy_hash == quinn.client.policy()["policy_hash"]
        # set_policy puts a policy in force: GET /v1/policy shows it, and
        # the dry run now accepts what the file's policy refused.
        h = quinn.set_policy('preset = "default"\nmin_tier = "verified"\n')
        shown = quinn.client.policy()
        assert shown["policy_hash"] == h != refused.policy_hash
        assert shown["policy"]["min_tier"] == "verified"
        assert 'min_tier = "verified"' in shown["toml"]
        assert quinn.check_policy("finance/payments", tier="verified").accepted
        assert quinn.check_policy("finance/payments").reason == "tier_too_low"
        # A policy that does not parse is refused and the one in force stays.
        with pytest.raises(agentmesh.BadRequest, match="policy"):
            quinn.client.set_policy('preset = "no-such-preset"\n')
        assert quinn.client.policy()["policy_hash"] == h
        # The file is read again on a reload.
        assert quinn.client.reload_policy() == refused.policy_hash
        # quinn's node has no registry.
        with pytest.raises(agentmesh.NotFound, match="registry"):
            quinn.search("weather")
        with pytest.raises(agentmesh.NotFound, match="registry"):
            quinn.register(capabilities=["chat"])
    finally:
        quinn.stop()


def test_register_and_search_the_registry(mesh: LocalMesh) -> None:
    carol = mesh["carol"]
    answer = carol.client.register("carol the forecaster", ["chat", "weather/forecast"])
    assert answer["amid"] == carol.amid
    assert answer["tier"] == "anonymous" and isinstance(answer["created"], bool)
    # A category finds the capabilities under it.
    found = carol.client.search("weather")
    mine = [r for r in found if r["amid"] == carol.amid]
    assert len(mine) == 1, found
    assert mine[0]["display_name"] == "carol the forecaster"
    assert mine[0]["capabilities"] == ["chat", "weather/forecast"]
    assert any(r["amid"] == carol.amid for r in mesh["dave"].search("weather/forecast"))
    assert all(r["amid"] != carol.amid for r in carol.search("finance"))
    assert carol.search("weather", tier_min="verified") == []
    assert len(carol.search("chat", limit=1)) <= 1
    # The registry refuses a capability that is not a lowercase path.
    with pytest.raises(agentmesh.BadRequest, match="Weather Forecast") as e:
        carol.register(capabilities=["Weather Forecast"])
    assert e.value.code == "bad_request" and e.value.status == 400
    # Registered again (under the agent's name), with one capability.
    again = carol.register(capabilities=["weather/forecast"])
    assert again["amid"] == carol.amid and again["created"] is False
    (entry,) = [r for r in carol.search("weather") if r["amid"] == carol.amid]
    assert entry["display_name"] == "carol" and entry["capabilities"] == ["weather/forecast"]
    assert all(r["amid"] != carol.amid for r in carol.search("chat"))

    async def main() -> list[dict[str, object]]:
        async with AsyncClient.from_data_dir(carol.data_dir) as c:
            await c.register("carol", ["chat", "weather/forecast"])
            with pytest.raises(agentmesh.BadRequest):
                await c.register("carol", ["Weather Forecast"])
            return await c.search("weather")

    assert any(r["amid"] == carol.amid for r in asyncio.run(main()))


def test_dashboard_link(mesh: LocalMesh) -> None:
    dave = mesh["dave"]
    link = dave.dashboard_link()
    url = httpx.URL(link.url)
    assert url.scheme == "http" and url.host == "127.0.0.1" and url.path == "/login"
    assert link.url.startswith(f"{dave.client.info.url}/login?code=")
    assert link.expires_in_s is not None and link.expires_in_s > 0
    # Each link is new, and logs a browser in once.
    assert dave.client.dashboard_link().url != link.url
    first = httpx.get(link.url, follow_redirects=False, timeout=10)
    assert first.status_code == 303 and "set-cookie" in first.headers
    assert httpx.get(link.url, follow_redirects=False, timeout=10).status_code == 401

    async def main() -> str:
        async with AsyncClient.from_data_dir(dave.data_dir) as c:
            return (await c.dashboard_link()).url

    assert httpx.URL(asyncio.run(main())).host == "127.0.0.1"


def test_metrics(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]

    def sent(text: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("agentmesh_messages_sent_total")
        )

    before = alice.metrics()
    assert "# TYPE agentmesh_" in before
    r = alice.send(bob, {"text": "counted"})
    wait_message(bob, lambda m: m.id == r.id)
    after = alice.client.metrics()
    assert sent(after) >= sent(before) + 1

    async def main() -> str:
        async with AsyncClient.from_data_dir(bob.data_dir) as c:
            return await c.metrics()

    assert "agentmesh_messages_received_total" in asyncio.run(main())


def test_timeseries_standing_and_diagnostics(mesh: LocalMesh) -> None:
    alice, bob = mesh["alice"], mesh["bob"]

    def sent_by_path(ts: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for minute in ts["minutes"]:
            for path, n in minute["sent"].items():
                out[path] = out.get(path, 0) + int(n)
        return out

    before = sent_by_path(alice.timeseries())
    r = alice.send(bob, {"text": "plotted"})
    wait_message(bob, lambda m: m.id == r.id)
    ts = alice.timeseries()
    assert len(ts["minutes"]) == 60 and ts["minute_ms"] == 60_000
    after = sent_by_path(ts)
    assert sum(after.values()) == sum(before.values()) + 1
    # The timeseries names paths as the node prints them (direct-quic),
    # receipts with underscores (direct_quic).
    path = r.path.replace("_", "-")
    assert after.get(path, 0) == before.get(path, 0) + 1, (r.path, after)
    assert ts["latency"]["count"] >= 1

    standing = alice.registry_standing()
    assert standing["state"] in {
        "checking",
        "not_configured",
        "registered",
        "not_registered",
        "unknown",
    }, standing

    d = alice.diagnostics()
    checks = {c["check"]: c for c in d["checks"]}
    assert checks["listening"]["result"] == "ok", checks["listening"]
    for c in d["checks"]:
        assert c["result"] in {"ok", "warn", "fail", "skip"}
        assert c["result"] == "ok" or c["fix"], c

    # The mesh's bootstrap is the registry, on this machine's clock.
    assert checks["clock vs registry"]["result"] == "ok", checks["clock vs registry"]
    clock = d["registry_clock"]
    assert abs(clock["offset_ms"]) <= clock["uncertainty_ms"] + 2, clock
    assert d["punch"] is None and "punch probe" not in checks

    # A hole-punch probe to alice, asynchronously: on loopback, direct.
    async def main() -> dict[str, Any]:
        async with AsyncClient.from_data_dir(bob.data_dir) as c:
            return await c.diagnostics(punch=alice.amid)

    probed = asyncio.run(main())
    assert any(c["check"] == "listening" for c in probed["checks"])
    probe = next(c for c in probed["checks"] if c["check"] == "punch probe")
    assert probe["result"] == "ok", probe
    assert probed["punch"]["peer"] == alice.amid and probed["punch"]["outcome"] == "direct"
    assert bob.diagnostics(punch=alice)["punch"]["outcome"] == "direct"


FORECAST = {"type": "request", "action": "forecast", "params": {"city": "Oslo"}}
ALERT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["type", "severity"],
    "properties": {"type": {"const": "alert"}, "severity": {"enum": ["low", "high"]}},
}


def test_message_schemas(mesh: LocalMesh, tmp_path: Path) -> None:
    # A weather agent (agentmesh run: the mesh's agents take no schema
    # flags) whose weather/forecast takes agentmesh/request@1 only, and
    # whose weather/alerts takes a custom schema only it knows.
    (tmp_path / "alert.json").write_text(json.dumps(ALERT_SCHEMA))
    wes = Agent.start(
        "wes",
        data_dir=tmp_path / "wes",
        bootstrap=mesh.bootstrap_addr,
        relays=[mesh.relay_addr],
        extra_args=[
            "--capability",
            "weather/forecast",
            "--capability",
            "weather/alerts",
            "--accept-schema",
            "weather/forecast=agentmesh/request@1",
            "--schema-file",
            f"x-acme/alert@1={tmp_path / 'alert.json'}",
            "--accept-schema",
            "weather/alerts=x-acme/alert@1",
        ],
    )
    alice, carol = mesh["alice"], mesh["carol"]
    try:
        # What wes knows and takes, as it says and as its card says.
        known = wes.schemas()
        assert set(agentmesh.STANDARD_SCHEMAS) | {"x-acme/alert@1"} <= set(known.ids)
        assert known.schemas["x-acme/alert@1"]["required"] == ["type", "severity"]
        assert known.accepted == {
            "weather/alerts": ["x-acme/alert@1"],
            "weather/forecast": ["agentmesh/request@1"],
        }
        assert alice.schemas_of(wes) == known.accepted
        assert alice.schemas().accepted == {}
        assert wes.schemas_of(alice) == {}  # no schemas in its card: any payload

        # No schema, one wes does not take for the capability, or one it
        # does not know: refused.
        with pytest.raises(agentmesh.Rejected) as refused:
            alice.send(wes, FORECAST, capability="weather/forecast")
        assert refused.value.reason == "unsupported_schema", refused.value.body
        text = {"type": "text", "text": "Oslo?"}
        for payload, schema in ((text, "agentmesh/text@1"), (FORECAST, "x-acme/unknown@1")):
            with pytest.raises(agentmesh.Rejected) as refused:
                alice.send(wes, payload, capability="weather/forecast", schema=schema)
            assert refused.value.reason == "unsupported_schema", refused.value.body

        # A conforming request arrives.
        r = alice.send(wes, FORECAST, capability="weather/forecast", schema="agentmesh/request@1")
        assert r.to == wes.amid
        assert wait_message(wes, lambda m: m.id == r.id).payload == FORECAST

        # One that does not conform to a schema alice's node knows fails
        # there, before anything is sent.
        with pytest.raises(agentmesh.InvalidPayload) as invalid:
            alice.send(
                wes,
                {"type": "request", "params": {"city": "Oslo"}},
                capability="weather/forecast",
                schema="agentmesh/request@1",
            )
        assert invalid.value.status == 400

        # A schema only the receiver knows: the receiver checks.
        with pytest.raises(agentmesh.Rejected) as refused:
            carol.send(
                wes,
                {"type": "alert", "severity": "dire"},
                capability="weather/alerts",
                schema="x-acme/alert@1",
            )
        assert refused.value.reason == "schema_invalid", refused.value.body
        alert = {"type": "alert", "severity": "high"}
        r = carol.send(wes, alert, capability="weather/alerts", schema="x-acme/alert@1")
        assert wait_message(wes, lambda m: m.id == r.id).payload == alert

        # A request with a schema, answered.
        @wes.on_message(kind="request", sender=alice)
        def answer(msg: Message) -> None:
            msg.reply({"type": "response", "result": {"city": "Oslo", "temp_c": 3}})

        with wes.run_in_background(poll=1.0):
            reply = alice.request(
                wes,
                {"type": "request", "action": "forecast", "params": {"city": "Oslo"}},
                capability="weather/forecast",
                schema="agentmesh/request@1",
                timeout=WAIT,
            )
        assert reply.kind == "reply" and reply.payload["result"]["temp_c"] == 3
    finally:
        wes.stop()
