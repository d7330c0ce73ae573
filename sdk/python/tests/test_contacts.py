"""Seed B's calls against real nodes that share no bootstrap and no DHT:
``export_card`` / ``import_card`` (the seed's ``public_bundle`` /
``connect_with_bundle``), ``peers`` (``list_peers``), petnames, and several
message handlers filtered by kind and sender."""

from __future__ import annotations

import asyncio
import base64
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agentmesh
from agentmesh import Agent, AsyncClient, Card, Message

pytestmark = pytest.mark.integration

WAIT = 60.0
PASS = "seed b calls"


def listening(agent: Agent) -> None:
    """Waits until the node listens (its card lists an address)."""
    deadline = time.monotonic() + WAIT
    while not agent.status().get("listen_addrs"):
        assert time.monotonic() < deadline, f"{agent.name} never listened"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Agent]]:
    """alice and bob, each alone: no bootstrap, no relay, no DHT."""
    root = tmp_path_factory.mktemp("contacts")
    alice = Agent.start("alice", data_dir=root / "alice", passphrase=PASS)
    bob = Agent.start("bob", data_dir=root / "bob", passphrase=PASS)
    try:
        listening(alice)
        listening(bob)
        yield alice, bob
    finally:
        alice.stop()
        bob.stop()


def tampered(card: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(card[1:] + "=" * (-len(card[1:]) % 4)))
    raw[len(raw) // 3] ^= 0x20
    return "u" + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def test_a_card_handed_out_of_band_reaches_its_agent(
    pair: tuple[Agent, Agent], tmp_path: Path
) -> None:
    alice, bob = pair
    card = bob.export_card()
    assert isinstance(card, Card) and card.amid == bob.amid
    assert str(card).startswith("u") and card.expires_ms > time.time() * 1000

    # Forged and garbage cards are refused with typed errors.
    with pytest.raises(agentmesh.InvalidCard):
        alice.import_card(tampered(str(card)))
    with pytest.raises(agentmesh.InvalidCard):
        alice.import_card("unot-a-card")
    with pytest.raises(agentmesh.InvalidName):
        alice.import_card(card, name=bob.amid)

    # From a file, named on the way in.
    f = tmp_path / "bob.card"
    f.write_text(str(card) + "\n")
    got = alice.import_card(f, name="bob")
    assert got.amid == bob.amid and got.name == "bob"
    assert alice.names()["bob"] == bob.amid

    seen: queue.Queue[Message] = queue.Queue()
    bob.on_message(seen.put)
    with bob.run_in_background(poll=1.0):
        r = alice.send("bob", {"text": "hello over an imported card"})
        assert r.to == bob.amid and r.path.startswith("direct")
        m = seen.get(timeout=WAIT)
        assert m.id == r.id and m.from_ == alice.amid
    bob._handlers.clear()

    peers = {p.amid: p for p in alice.peers()}
    p = peers[bob.amid]
    assert p.name == "bob" and p.card_imported and p.presence == "online"
    assert p.sessions >= 1 and p.last_seen_ms is not None
    assert p.path is not None and p.path.startswith("direct")


def test_names_are_validated_resolved_and_forgotten(pair: tuple[Agent, Agent]) -> None:
    alice, bob = pair
    for bad in ["Bob", "", "9lives", "bob smith", bob.amid]:
        with pytest.raises(agentmesh.InvalidName):
            alice.set_name(bad, bob)
    alice.set_name("bobby", bob)
    assert alice.names()["bobby"] == bob.amid
    assert alice.remove_name("bobby") == bob.amid
    assert "bobby" not in alice.names()
    with pytest.raises(agentmesh.NotFound):
        alice.remove_name("bobby")
    with pytest.raises(agentmesh.InvalidAmid):
        alice.send("bobby", "to nobody")


def test_several_handlers_each_with_its_filter(pair: tuple[Agent, Agent]) -> None:
    alice, bob = pair
    bob.import_card(alice.export_card(), name="alice")
    every: queue.Queue[Message] = queue.Queue()
    requests: queue.Queue[Message] = queue.Queue()
    from_alice: queue.Queue[Message] = queue.Queue()
    from_someone_else: queue.Queue[Message] = queue.Queue()
    bob._handlers.clear()
    bob.on_message(every.put)

    @bob.on_message(kind="request")
    def answer(m: Message) -> None:
        requests.put(m)
        m.reply({"answer": 42})

    bob.on_message(sender="alice")(from_alice.put)
    bob.on_message(sender="am" + "1" * 50)(from_someone_else.put)
    try:
        with bob.run_in_background(poll=1.0):
            sent = alice.send(bob, {"text": "plain"})
            reply = alice.request(bob, {"q": "life"}, timeout=WAIT)
            assert reply.payload == {"answer": 42}
            got = [every.get(timeout=WAIT), every.get(timeout=WAIT)]
            assert {m.kind for m in got} == {"message", "request"}
            assert requests.get(timeout=WAIT).payload == {"q": "life"}
            ids = {from_alice.get(timeout=WAIT).id, from_alice.get(timeout=WAIT).id}
            assert sent.id in ids
    finally:
        bob._handlers.clear()
    # The request handler saw only the request; nothing matched the stranger.
    assert requests.empty() and from_someone_else.empty()


def test_the_async_client_has_the_same_calls(pair: tuple[Agent, Agent]) -> None:
    alice, bob = pair

    async def go() -> None:
        async with AsyncClient.from_data_dir(alice.data_dir) as c:
            card = await c.export_card()
            assert card.amid == alice.amid
            async with AsyncClient.from_data_dir(bob.data_dir) as b:
                imported = await b.import_card(card)
                assert imported.amid == alice.amid
                await b.set_name("al", alice.amid)
                assert (await b.names())["al"] == alice.amid
                assert any(p.amid == alice.amid and p.name for p in await b.peers())
                assert await b.remove_name("al") == alice.amid
                with pytest.raises(agentmesh.InvalidCard):
                    await b.import_card(tampered(str(card)))

    asyncio.run(go())
