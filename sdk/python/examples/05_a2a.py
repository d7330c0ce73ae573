"""A2A over the mesh: an A2A client reaches bob's A2A server through
alice's gateway, end to end encrypted, with no public URL.

    A2A client -> alice's gateway (--a2a) -> mesh -> bob's node
               -> bob's A2A server (--a2a-upstream) -> and back

Both ends are the official A2A SDK (pip install './sdk/python[a2a]').

python examples/05_a2a.py
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import uvicorn
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_message_text, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Role,
    SendMessageRequest,
)
from starlette.applications import Starlette

from agentmesh import LocalMesh


class Bob(AgentExecutor):
    """Bob's A2A agent: answers every message."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        print(f"[bob's A2A server] got: {text}")
        answer = f"Hi, this is bob. You said: {text}"
        await event_queue.enqueue_event(new_text_message(answer, context_id=context.context_id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def serve_bob() -> tuple[str, uvicorn.Server]:
    """Bob's A2A server on a free loopback port; its JSON-RPC URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    card = AgentCard(
        name="bob",
        description="answers messages",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="chat", name="chat", description="answers", tags=["chat"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=Bob(), task_store=InMemoryTaskStore(), agent_card=card
    )
    app = Starlette(
        routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, rpc_url="/")]
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("bob's A2A server did not start")
        time.sleep(0.05)
    return url, server


async def ask(url: str, text: str) -> str:
    """Sends one A2A message with the official client; bob's answer."""
    async with httpx.AsyncClient(timeout=90) as http:
        config = ClientConfig(httpx_client=http)
        # The card is read from <url>/.well-known/agent-card.json.
        async with await create_client(url, client_config=config) as client:
            request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
            async for event in client.send_message(request):
                if event.HasField("message"):
                    return get_message_text(event.message)
    raise RuntimeError("no answer")


def main() -> None:
    upstream, server = serve_bob()
    try:
        with LocalMesh(
            names=["alice", "bob"],
            extra_args={
                "alice": ["--a2a", "127.0.0.1:0"],  # a gateway for A2A clients
                "bob": ["--a2a-upstream", upstream],  # A2A requests go to bob's server
            },
        ) as mesh:
            alice, bob = mesh.agents
            # Any agent, through alice's gateway: <gateway>/a2a/<AMID>.
            url = f"{alice.a2a_url}/a2a/{bob.amid}"
            print(f"[A2A client] bob is at {url}")
            answer = asyncio.run(ask(url, "hello over the mesh"))
            print(f"[A2A client] answer: {answer}")
            assert answer == "Hi, this is bob. You said: hello over the mesh"
        print("ok: an A2A message crossed the mesh and came back")
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
