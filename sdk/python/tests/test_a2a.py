"""The A2A gateway, with the official A2A SDK (``a2a-sdk``) on both ends.

An A2A server built with a2a-sdk (uvicorn, on loopback) is bob's (and
dave's) ``--a2a-upstream``; the a2a-sdk client talks to alice's (and
carol's) gateway, ``--a2a``, at ``<gateway>/a2a/<AMID>``. Each request
crosses the mesh (KNOCK, Olm, direct or relayed) and comes back.

Needs the AgentMesh binaries and the ``a2a`` extra
(``pip install './sdk/python[test,a2a]'``); without them the tests are
skipped with the reason, and fail with ``AGENTMESH_REQUIRE_SDK_TESTS=1``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import pytest

from agentmesh import LocalMesh

REQUIRE = os.environ.get("AGENTMESH_REQUIRE_SDK_TESTS") == "1"

try:
    import uvicorn
    from a2a.client import A2AClientError, Client, ClientConfig, create_client
    from a2a.client.card_resolver import parse_agent_card
    from a2a.helpers import (
        get_artifact_text,
        get_message_text,
        new_task_from_user_message,
        new_text_message,
        new_text_part,
    )
    from a2a.server.agent_execution import AgentExecutor, RequestContext
    from a2a.server.context import ServerCallContext
    from a2a.server.events import Event, EventQueue
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
    from a2a.types import (
        AgentCapabilities,
        AgentCard,
        AgentInterface,
        AgentSkill,
        CancelTaskRequest,
        GetExtendedAgentCardRequest,
        GetTaskRequest,
        Message,
        Role,
        SendMessageConfiguration,
        SendMessageRequest,
        StreamResponse,
        SubscribeToTaskRequest,
        Task,
        TaskNotFoundError,
        TaskState,
        UnsupportedOperationError,
    )
    from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from jwt import PyJWK
    from starlette.applications import Starlette
except ImportError as e:  # pragma: no cover - depends on the environment
    if REQUIRE:
        pytest.fail(
            f"AGENTMESH_REQUIRE_SDK_TESTS=1 but the a2a extra is not installed: {e}",
            pytrace=False,
        )
    pytest.skip(
        f"needs the a2a extra (pip install './sdk/python[test,a2a]'): {e}",
        allow_module_level=True,
    )

pytestmark = pytest.mark.integration

#: How long one A2A call through the mesh may take (the gateway itself
#: gives up after 120 s); generous, for loaded CI machines.
CALL = 90.0
T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = CALL) -> T:
    """Runs a coroutine to its end, or fails after ``timeout`` seconds
    (an A2A call must never hang)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# The upstream A2A server: bob's, built with the official SDK.


class Gates:
    """Tasks that wait, by name, until the test lets them finish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}

    def get(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def open_all(self) -> None:
        with self._lock:
            for gate in self._gates.values():
                gate.set()


class EchoExecutor(AgentExecutor):
    """Answers ``<text>`` with the Message ``bob got: <text>``, and
    ``task: <text>`` with a Task: submitted, working, an artifact
    ``bob did: <text>``, completed. ``task: wait <name> ...`` waits, once
    working, until the gate ``<name>`` opens. Canceling a task marks it
    canceled (and lets a wait end)."""

    def __init__(self, gates: Gates) -> None:
        self.gates = gates
        self.canceled: set[str] = set()
        self.waiting: dict[str, threading.Event] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        if not text.startswith("task:"):
            await event_queue.enqueue_event(
                new_text_message(f"bob got: {text}", context_id=context.context_id)
            )
            return
        body = text.removeprefix("task:").strip()
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work(
            new_text_message("working on it", context_id=task.context_id, task_id=task.id)
        )
        words = body.split()
        if len(words) >= 2 and words[0] == "wait":
            gate = self.gates.get(words[1])
            self.waiting[task.id] = gate
            if not await asyncio.to_thread(gate.wait, 120):
                await updater.failed()
                return
        if task.id in self.canceled:
            return
        await updater.add_artifact([new_text_part(f"bob did: {body}")], name="result")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id, context.context_id
        assert task_id is not None and context_id is not None
        self.canceled.add(task_id)
        await TaskUpdater(event_queue, task_id, context_id).cancel(
            new_text_message("canceled", context_id=context_id, task_id=task_id)
        )
        # The task's wait ends (its thread would otherwise run on).
        if (gate := self.waiting.get(task_id)) is not None:
            gate.set()


class RecordingHandler(DefaultRequestHandler):
    """The SDK's default handler, noting each SubscribeToTask it serves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscribed: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def subscription(self, task_id: str) -> threading.Event:
        with self._lock:
            return self.subscribed.setdefault(task_id, threading.Event())

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        self.subscription(params.id).set()
        async for event in super().on_subscribe_to_task(params, context):
            yield event


class Upstream:
    """The SDK's A2A server (JSON-RPC at ``/a2a``) under uvicorn, on a
    thread, on a free loopback port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/a2a"
        card = AgentCard(
            name="bob",
            description="echoes text; 'task: ...' runs a task",
            version="1.0.0",
            supported_interfaces=[
                AgentInterface(url=self.url, protocol_binding="JSONRPC", protocol_version="1.0")
            ],
            capabilities=AgentCapabilities(streaming=True),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[AgentSkill(id="echo", name="echo", description="echoes text", tags=["echo"])],
        )
        self.gates = Gates()
        self.handler = RecordingHandler(
            agent_executor=EchoExecutor(self.gates),
            task_store=InMemoryTaskStore(),
            agent_card=card,
        )
        app = Starlette(
            routes=[
                *create_agent_card_routes(card),
                *create_jsonrpc_routes(self.handler, rpc_url="/a2a"),
            ]
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the upstream A2A server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.gates.open_all()
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture(scope="module")
def a2a_mesh(upstream: Upstream) -> Iterator[LocalMesh]:
    """alice and carol run gateways; bob and dave hand A2A requests to the
    upstream server; carol and dave are reachable only through the relay
    (neither has a listener: between them, only the relay carries); bob
    blocks carol."""
    gateway = ["--a2a", "127.0.0.1:0"]
    serve = ["--a2a-upstream", upstream.url]
    with LocalMesh(
        names=["alice", "bob", "carol", "dave"],
        private=["carol", "dave"],
        extra_args={"alice": gateway, "carol": gateway, "bob": serve, "dave": serve},
        timeout=180,
    ) as m:
        m["bob"].block(m["carol"])
        yield m


def gateway(mesh: LocalMesh, who: str) -> str:
    url = mesh[who].a2a_url
    assert url is not None and url.startswith("http://127.0.0.1:"), url
    return url


def agent_url(mesh: LocalMesh, via: str, to: str) -> str:
    """The A2A URL of agent ``to`` through ``via``'s gateway."""
    return f"{gateway(mesh, via)}/a2a/{mesh[to].amid}"


@asynccontextmanager
async def a2a_client(url: str, *, streaming: bool = True) -> AsyncIterator[Client]:
    """An official A2A client for the agent at ``url`` (its card is
    resolved from ``<url>/.well-known/agent-card.json``)."""
    async with httpx.AsyncClient(timeout=CALL) as http:
        client = await create_client(
            url, client_config=ClientConfig(httpx_client=http, streaming=streaming)
        )
        async with client:
            yield client


def user_message(text: str) -> Message:
    return new_text_message(text, role=Role.ROLE_USER)


async def collect(client: Client, request: SendMessageRequest) -> list[StreamResponse]:
    return [event async for event in client.send_message(request)]


def kind(event: StreamResponse) -> str:
    k = event.WhichOneof("payload")
    assert isinstance(k, str), event
    return k


# Through the gateway, with the official client.


def test_send_message_crosses_the_mesh_and_back(a2a_mesh: LocalMesh) -> None:
    url = agent_url(a2a_mesh, "alice", "bob")

    async def go() -> tuple[AgentCard, list[StreamResponse]]:
        async with a2a_client(url, streaming=False) as client:
            card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
            events = await collect(client, SendMessageRequest(message=user_message("hello")))
            return card, events

    card, events = run(go())
    # The card the client resolved: bob, reached through alice's gateway.
    assert card.name == f"agentmesh:{a2a_mesh['bob'].amid}"
    assert card.supported_interfaces[0].url == url
    assert card.supported_interfaces[0].protocol_binding == "JSONRPC"
    assert card.capabilities.streaming
    # SendMessage (not streaming): bob's server answered with a Message.
    assert [kind(e) for e in events] == ["message"]
    assert get_message_text(events[0].message) == "bob got: hello"
    assert events[0].message.role == Role.ROLE_AGENT
    # Both public: alice's node reached bob's directly.
    bob = a2a_mesh["bob"].amid
    paths = [p.path for p in a2a_mesh["alice"].peers() if p.amid == bob]
    assert any(p is not None and p.startswith("direct") for p in paths), paths


def test_send_message_to_an_agent_reachable_only_through_the_relay(
    a2a_mesh: LocalMesh,
) -> None:
    """carol's gateway to dave: both private, so the request and its answer
    go through the relay."""
    url = agent_url(a2a_mesh, "carol", "dave")

    async def go() -> list[StreamResponse]:
        async with a2a_client(url, streaming=False) as client:
            return await collect(client, SendMessageRequest(message=user_message("via relay")))

    events = run(go())
    assert [kind(e) for e in events] == ["message"]
    assert get_message_text(events[0].message) == "bob got: via relay"
    dave = a2a_mesh["dave"].amid
    paths = [p.path for p in a2a_mesh["carol"].peers() if p.amid == dave]
    assert paths and all(p in (None, "relayed") for p in paths), paths


def test_a_message_answer_through_the_streaming_client(a2a_mesh: LocalMesh) -> None:
    """The client's default (the card says streaming): SendStreamingMessage,
    answered by one Message event."""
    url = agent_url(a2a_mesh, "alice", "bob")

    async def go() -> list[StreamResponse]:
        async with a2a_client(url) as client:
            return await collect(client, SendMessageRequest(message=user_message("streamed")))

    events = run(go())
    assert [kind(e) for e in events] == ["message"]
    assert get_message_text(events[0].message) == "bob got: streamed"


def test_send_message_returning_a_completed_task(a2a_mesh: LocalMesh) -> None:
    url = agent_url(a2a_mesh, "alice", "bob")

    async def go() -> tuple[list[StreamResponse], Task]:
        async with a2a_client(url, streaming=False) as client:
            events = await collect(
                client, SendMessageRequest(message=user_message("task: count to three"))
            )
        task_id = events[0].task.id
        async with a2a_client(url, streaming=False) as fresh:
            return events, await fresh.get_task(GetTaskRequest(id=task_id))

    events, again = run(go())
    assert [kind(e) for e in events] == ["task"]
    task = events[0].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [get_artifact_text(a) for a in task.artifacts] == ["bob did: count to three"]
    assert again.id == task.id
    assert again.status.state == TaskState.TASK_STATE_COMPLETED
    assert [get_artifact_text(a) for a in again.artifacts] == ["bob did: count to three"]


def test_errors_of_bobs_server_come_back_as_a2a_errors(a2a_mesh: LocalMesh) -> None:
    """GetTask of an unknown task (-32001), and SubscribeToTask of a
    completed one (-32004, an answer that is not SSE, carried as one)."""
    url = agent_url(a2a_mesh, "alice", "bob")

    async def unknown() -> None:
        async with a2a_client(url, streaming=False) as client:
            await client.get_task(GetTaskRequest(id="no-such-task"))

    with pytest.raises(TaskNotFoundError):
        run(unknown())

    async def done() -> None:
        async with a2a_client(url, streaming=False) as client:
            (event,) = await collect(client, SendMessageRequest(message=user_message("task: x")))
        assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
        async with a2a_client(url) as fresh:
            await _subscribe(fresh, event.task.id)

    with pytest.raises(UnsupportedOperationError, match="terminal state"):
        run(done())


def test_a_task_completes_while_the_client_reconnects(
    a2a_mesh: LocalMesh, upstream: Upstream
) -> None:
    """SendMessage returns at once (return_immediately) with a task still
    working; the task completes meanwhile; a fresh client's GetTask finds
    it completed."""
    url = agent_url(a2a_mesh, "alice", "bob")
    gate = f"g{uuid.uuid4().hex[:8]}"

    async def send() -> Task:
        async with a2a_client(url, streaming=False) as client:
            request = SendMessageRequest(
                message=user_message(f"task: wait {gate} then finish"),
                configuration=SendMessageConfiguration(return_immediately=True),
            )
            events = await collect(client, request)
        assert [kind(e) for e in events] == ["task"]
        return events[0].task

    first = run(send())
    assert first.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
    upstream.gates.get(gate).set()

    async def poll() -> Task:
        async with a2a_client(url, streaming=False) as fresh:
            while True:
                task = await fresh.get_task(GetTaskRequest(id=first.id))
                if task.status.state == TaskState.TASK_STATE_COMPLETED:
                    return task
                await asyncio.sleep(0.2)

    task = run(poll())
    assert task.id == first.id
    assert [get_artifact_text(a) for a in task.artifacts] == [f"bob did: wait {gate} then finish"]


#: How bob's server ends SSE lines: a2a-sdk's default (sse-starlette's
#: CRLF), and LF; the gateway parses both.
SEPARATORS = [
    pytest.param(
        "\r\n",
        id="crlf",
    ),
    pytest.param("\n", id="lf"),
]


@pytest.fixture
def sse_separator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Makes bob's server end its SSE lines with ``request.param``."""
    from sse_starlette.sse import EventSourceResponse

    sep: str = request.param
    monkeypatch.setattr(EventSourceResponse, "DEFAULT_SEPARATOR", sep)
    return sep


@pytest.mark.parametrize("sse_separator", SEPARATORS, indirect=True)
def test_streaming_events_come_back_in_order(a2a_mesh: LocalMesh, sse_separator: str) -> None:
    url = agent_url(a2a_mesh, "alice", "bob")

    async def go() -> list[StreamResponse]:
        async with a2a_client(url) as client:
            return await collect(client, SendMessageRequest(message=user_message("task: stream")))

    events = run(go())
    kinds = [kind(e) for e in events]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"], kinds
    assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    assert events[1].status_update.status.state == TaskState.TASK_STATE_WORKING
    assert get_message_text(events[1].status_update.status.message) == "working on it"
    assert get_artifact_text(events[2].artifact_update.artifact) == "bob did: stream"
    assert events[3].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    ids = {events[0].task.id, events[1].status_update.task_id}
    ids |= {events[2].artifact_update.task_id, events[3].status_update.task_id}
    assert len(ids) == 1, ids


@pytest.mark.parametrize("sse_separator", SEPARATORS, indirect=True)
def test_subscribe_to_a_running_task_from_a_fresh_client(
    a2a_mesh: LocalMesh, upstream: Upstream, sse_separator: str
) -> None:
    """SendMessage returns a working task at once; a fresh client
    subscribes to it; the task then completes: the subscription brings the
    task and its updates up to completion."""
    url = agent_url(a2a_mesh, "alice", "bob")
    gate = f"g{uuid.uuid4().hex[:8]}"

    async def go() -> list[StreamResponse]:
        async with a2a_client(url, streaming=False) as client:
            request = SendMessageRequest(
                message=user_message(f"task: wait {gate}"),
                configuration=SendMessageConfiguration(return_immediately=True),
            )
            (first,) = await collect(client, request)
        task_id = first.task.id
        async with a2a_client(url) as fresh:
            sub = asyncio.ensure_future(_subscribe(fresh, task_id))
            # The task finishes once bob's server serves the subscription.
            seen = upstream.handler.subscription(task_id)
            try:
                assert await asyncio.to_thread(seen.wait, CALL), "no SubscribeToTask upstream"
            finally:
                upstream.gates.get(gate).set()
            return await sub

    events = run(go())
    kinds = [kind(e) for e in events]
    assert kinds[0] == "task" and kinds[-1] == "status_update", kinds
    assert "artifact_update" in kinds, kinds
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def _subscribe(client: Client, task_id: str) -> list[StreamResponse]:
    return [e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id))]


#: Both paths: alice to bob directly, carol to dave through the relay.
PATHS = [
    pytest.param("alice", "bob", id="direct"),
    pytest.param("carol", "dave", id="relayed"),
]


def working(event: StreamResponse) -> bool:
    return (
        kind(event) == "status_update"
        and event.status_update.status.state == TaskState.TASK_STATE_WORKING
    )


@pytest.mark.parametrize(("via", "to"), PATHS)
def test_streamed_events_reach_the_client_as_the_upstream_sends_them(
    a2a_mesh: LocalMesh, upstream: Upstream, via: str, to: str
) -> None:
    """bob's server sends the task and its working status, then waits for
    a gate that only the client opens, once it has seen both: each event
    crosses the mesh and reaches the client on its own, before the
    upstream sends the next ones (the artifact, the completion)."""
    url = agent_url(a2a_mesh, via, to)
    name = f"g{uuid.uuid4().hex[:8]}"
    gate = upstream.gates.get(name)

    async def go() -> tuple[list[str], list[StreamResponse]]:
        before: list[str] = []
        events: list[StreamResponse] = []
        async with a2a_client(url) as client:
            request = SendMessageRequest(message=user_message(f"task: wait {name} then finish"))
            async for event in client.send_message(request):
                events.append(event)
                if not gate.is_set():
                    before.append(kind(event))
                    if working(event):
                        gate.set()
        return before, events

    before, events = run(go())
    assert before == ["task", "status_update"], before
    kinds = [kind(e) for e in events]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"], kinds
    assert get_artifact_text(events[2].artifact_update.artifact) == (
        f"bob did: wait {name} then finish"
    )
    assert events[3].status_update.status.state == TaskState.TASK_STATE_COMPLETED


def test_a_client_cancels_a_running_task_through_the_gateway(
    a2a_mesh: LocalMesh, upstream: Upstream
) -> None:
    """A streamed task is working (its gate never opens); another client
    cancels it through the gateway: CancelTask answers with the task
    canceled, the stream ends, and GetTask finds it canceled."""
    url = agent_url(a2a_mesh, "alice", "bob")
    name = f"g{uuid.uuid4().hex[:8]}"

    async def go() -> tuple[Task, list[StreamResponse], Task]:
        events: list[StreamResponse] = []
        started = asyncio.Event()

        async def follow(client: Client) -> None:
            request = SendMessageRequest(message=user_message(f"task: wait {name}"))
            async for event in client.send_message(request):
                events.append(event)
                if working(event):
                    started.set()

        async with a2a_client(url) as client:
            streamed = asyncio.ensure_future(follow(client))
            waited = asyncio.ensure_future(started.wait())
            await asyncio.wait([streamed, waited], return_when=asyncio.FIRST_COMPLETED)
            waited.cancel()
            assert started.is_set(), f"the stream ended before the task worked: {events}"
            task_id = events[0].task.id
            async with a2a_client(url, streaming=False) as other:
                canceled = await other.cancel_task(CancelTaskRequest(id=task_id))
                await streamed
                again = await other.get_task(GetTaskRequest(id=task_id))
        return canceled, events, again

    canceled, events, again = run(go())
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED, canceled
    assert canceled.id == events[0].task.id
    assert again.status.state == TaskState.TASK_STATE_CANCELED
    assert upstream.gates.get(name).is_set(), "bob's executor was told to cancel"
    kinds = [kind(e) for e in events]
    assert kinds[:2] == ["task", "status_update"], kinds
    assert "artifact_update" not in kinds, kinds


def test_a_client_refused_by_the_knock_policy_gets_an_a2a_error(a2a_mesh: LocalMesh) -> None:
    """bob blocks carol: her A2A request through her gateway is refused
    with -32050, at once rather than after a timeout."""
    url = agent_url(a2a_mesh, "carol", "bob")

    async def go() -> None:
        async with a2a_client(url, streaming=False) as client:
            await collect(client, SendMessageRequest(message=user_message("let me in")))

    started = time.monotonic()
    with pytest.raises(A2AClientError) as info:
        run(go(), timeout=60)
    assert "-32050" in str(info.value), info.value
    assert "blocked" in str(info.value), info.value
    assert time.monotonic() - started < 60

    # The raw answer carries the reason as google.rpc.ErrorInfo.
    answer = rpc(url, "SendMessage", _message_params("let me in"))
    error = answer["error"]
    assert error["code"] == -32050, answer
    assert error["data"][0]["reason"] == "KNOCK_REJECTED"
    assert error["data"][0]["metadata"]["reason"] == "blocked"


# Bad input straight over HTTP.


def _message_params(text: str) -> dict[str, Any]:
    return {
        "message": {
            "messageId": uuid.uuid4().hex,
            "role": "ROLE_USER",
            "parts": [{"text": text}],
        }
    }


def rpc(url: str, method: str, params: Any = None, **kw: Any) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": "t1", "method": method, "params": params or {}}
    return post(url, json.dumps(body).encode(), **kw)


def post(url: str, body: bytes, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    h = {"content-type": "application/json", "A2A-Version": "1.0", **(headers or {})}
    r = httpx.post(url, content=body, headers=h, timeout=CALL)
    assert r.status_code == 200, (r.status_code, r.text)
    answer = r.json()
    assert isinstance(answer, dict), answer
    return answer


def test_bad_requests_get_json_rpc_errors(a2a_mesh: LocalMesh) -> None:
    url = agent_url(a2a_mesh, "alice", "bob")
    assert rpc(url, "Nope")["error"]["code"] == -32601
    assert rpc(url, "CreateTaskPushNotificationConfig")["error"]["code"] == -32003
    envelope = post(url, json.dumps({"id": 1, "method": "SendMessage"}).encode())
    assert envelope["error"]["code"] == -32600
    assert envelope["id"] == 1
    assert post(url, b'{"jsonrpc": "2.0", "id": 2}')["error"]["code"] == -32600
    parse = post(url, b"{not json")
    assert parse["error"]["code"] == -32700
    assert parse["id"] is None
    bad = rpc(f"{gateway(a2a_mesh, 'alice')}/a2a/not-an-amid", "SendMessage", _message_params("x"))
    assert bad["error"]["code"] == -32602
    assert bad["id"] == "t1"


def test_an_oversized_request_gets_a_json_rpc_error(a2a_mesh: LocalMesh) -> None:
    """A body over the gateway's limit (512 KiB) is refused the way A2A
    clients read refusals: a JSON-RPC error (invalid request, id null: the
    body was not parsed), not a bare HTTP 413."""
    url = agent_url(a2a_mesh, "alice", "bob")
    answer = rpc(url, "SendMessage", {"padding": "x" * (512 * 1024)})
    assert answer["error"]["code"] == -32600, answer
    assert answer["id"] is None
    assert "524288" in answer["error"]["message"], answer
    # The gateway goes on serving.
    assert rpc(url, "Nope")["error"]["code"] == -32601


def test_an_unknown_agent_gets_a_json_rpc_error_in_time(a2a_mesh: LocalMesh) -> None:
    """A well-formed AMID of an agent that never published a card: -32051
    (could not be reached), long before the gateway's own 120 s."""
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    url = f"{gateway(a2a_mesh, 'alice')}/a2a/{amid_of(key)}"
    started = time.monotonic()
    answer = rpc(url, "SendMessage", _message_params("anyone there?"))
    assert time.monotonic() - started < CALL
    assert answer["error"]["code"] == -32051, answer
    assert answer["id"] == "t1"


def test_the_gateway_refuses_web_pages(a2a_mesh: LocalMesh) -> None:
    base = gateway(a2a_mesh, "alice")
    r = httpx.get(
        f"{base}/.well-known/agent-card.json",
        headers={"Origin": "http://evil.example"},
        timeout=CALL,
    )
    assert r.status_code == 403


# The gateway's own card.

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def amid_key(amid: str) -> bytes:
    """The Ed25519 public key inside an AMID: ``am`` + base58(version 1 ||
    key || the first 4 bytes of sha256(sha256(version || key)))."""
    assert amid.startswith("am"), amid
    n = 0
    for c in amid[2:]:
        n = n * 58 + _B58.index(c)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    raw = b"\0" * (len(amid[2:]) - len(amid[2:].lstrip("1"))) + raw
    assert len(raw) == 37 and raw[0] == 1, raw.hex()
    check = hashlib.sha256(hashlib.sha256(raw[:33]).digest()).digest()[:4]
    assert raw[33:] == check, "AMID checksum"
    return raw[1:33]


def amid_of(key: bytes) -> str:
    """The AMID of Ed25519 public key ``key`` (what :func:`amid_key` reads)."""
    raw = b"\x01" + key
    raw += hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4]
    n = int.from_bytes(raw, "big")
    text = ""
    while n:
        n, r = divmod(n, 58)
        text = _B58[r] + text
    return "am" + text


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def canonical(value: Any) -> bytes:
    """RFC 8785 for cards (strings, integers, booleans, arrays, objects)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def jws_input(protected: str, card: dict[str, Any]) -> bytes:
    """The JWS signing input of a card (detached payload: its canonical JSON)."""
    unsigned = {k: v for k, v in card.items() if k != "signatures"}
    return f"{protected}.{_b64e(canonical(unsigned))}".encode()


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key: bytes) -> PyJWK:
    """An Ed25519 public key as a JWK, as a2a-sdk's verifier takes it."""
    return PyJWK({"kty": "OKP", "crv": "Ed25519", "x": _b64e(key)}, algorithm="EdDSA")


def own_card(mesh: LocalMesh, who: str) -> dict[str, Any]:
    r = httpx.get(f"{gateway(mesh, who)}/.well-known/agent-card.json", timeout=CALL)
    assert r.status_code == 200, r.text
    card = r.json()
    assert isinstance(card, dict), card
    return card


def test_the_gateways_own_card_is_signed_with_the_agents_key(a2a_mesh: LocalMesh) -> None:
    alice = a2a_mesh["alice"]
    base = gateway(a2a_mesh, "alice")
    card = own_card(a2a_mesh, "alice")
    assert card["supportedInterfaces"][0] == {
        "url": f"{base}/a2a/{alice.amid}",
        "protocolBinding": "JSONRPC",
        "protocolVersion": "1.0",
    }
    (sig,) = card["signatures"]
    header = json.loads(_b64(sig["protected"]))
    assert header == {"alg": "EdDSA", "typ": "JOSE", "kid": alice.amid}

    # The official SDK reads the card, signature included.
    parsed = parse_agent_card(json.loads(json.dumps(card)))
    assert parsed.signatures[0].protected == sig["protected"]
    assert parsed.signatures[0].signature == sig["signature"]

    # The JWS verifies with the key inside alice's AMID, over the RFC 8785
    # form of the card as served, and over nothing else.
    key = Ed25519PublicKey.from_public_bytes(amid_key(alice.amid))
    key.verify(_b64(sig["signature"]), jws_input(sig["protected"], card))
    with pytest.raises(InvalidSignature):
        key.verify(_b64(sig["signature"]), jws_input(sig["protected"], {**card, "name": "x"}))


def test_the_official_client_verifies_the_gateways_card(a2a_mesh: LocalMesh) -> None:
    """create_client(..., signature_verifier=...) on alice's own card, with
    her key (the kid is her AMID)."""
    base = gateway(a2a_mesh, "alice")

    def key_for(kid: str | None, jku: str | None) -> PyJWK:
        assert kid is not None
        return jwk(amid_key(kid))

    verifier = create_signature_verifier(key_for, ["EdDSA"])

    async def go() -> str:
        async with httpx.AsyncClient(timeout=CALL) as http:
            config = ClientConfig(httpx_client=http)
            client = await create_client(base, client_config=config, signature_verifier=verifier)
            async with client:
                card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
                return card.name

    assert run(go()) == f"agentmesh:{a2a_mesh['alice'].amid}"


@pytest.mark.parametrize("required_false", [False, True])
def test_what_the_sdk_verifier_accepts(required_false: bool) -> None:
    """A card signed the gateway's way (EdDSA over the RFC 8785 form of the
    JSON served) verifies with a2a-sdk's verifier, unless it holds a false
    ``required``: the SDK's verifier drops a false ``required`` before it
    checks, so the gateway leaves it out."""
    secret = Ed25519PrivateKey.generate()
    extension: dict[str, Any] = {"uri": "https://agentmesh.dev/a2a/knock/v1", "description": "k"}
    if required_false:
        extension["required"] = False
    card: dict[str, Any] = {
        "name": "agentmesh:x",
        "description": "d",
        "version": "0.1.0",
        "supportedInterfaces": [
            {
                "url": "http://127.0.0.1:1/a2a/x",
                "protocolBinding": "JSONRPC",
                "protocolVersion": "1.0",
            }
        ],
        "capabilities": {"streaming": True, "pushNotifications": False, "extensions": [extension]},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "s", "name": "s", "description": "s", "tags": ["s"]}],
    }
    protected = _b64e(canonical({"alg": "EdDSA", "typ": "JOSE", "kid": "k"}))
    signature = _b64e(secret.sign(jws_input(protected, card)))
    card["signatures"] = [{"protected": protected, "signature": signature}]
    public = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    verify = create_signature_verifier(lambda kid, jku: jwk(public), ["EdDSA"])
    parsed = parse_agent_card(json.loads(json.dumps(card)))
    if required_false:
        with pytest.raises(InvalidSignaturesError):
            verify(parsed)
    else:
        verify(parsed)


def test_amid_key_decodes_what_the_node_encodes() -> None:
    """A known AMID's key round-trips (sanity of the base58 decoder)."""
    key = bytes(range(32))
    assert amid_key(amid_of(key)) == key
