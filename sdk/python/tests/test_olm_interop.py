"""A second Olm implementation reads our messages, and we read its.

libolm, the reference C implementation of Olm (through ``python-olm``,
the ``interop`` extra), talks to the node's own Olm path (the
``olm_interop`` example: ``SessionStore::seal_first``, ``seal`` and
``receive``). Envelopes carry the binary Olm message (SPEC.md §7.2);
libolm's Python API takes and gives base64 without padding, so the test
converts between the two. The plaintext is the node's ``Content`` CBOR
(SPEC.md §6.7), which the test also builds byte for byte on its own.
libolm also opens the pre-key message kept in ``vectors/olm.json``, with
bob's account from there exported in libolm's pickle format.

Skipped, with the reason, when ``python-olm`` is not installed or the
example is not built (``cargo build -p agentmesh-node --example
olm_interop``); failed instead when ``AGENTMESH_REQUIRE_SDK_TESTS=1``.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRE = os.environ.get("AGENTMESH_REQUIRE_SDK_TESTS") == "1"
ANSWER_TIMEOUT_S = 30.0
# Seeds of the peers that libolm plays (envelope signatures are Ed25519,
# outside Olm; the example signs them with these identities).
BOB = 2
CAROL = 3


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"AGENTMESH_REQUIRE_SDK_TESTS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _olm() -> Any:
    try:
        return importlib.import_module("olm")
    except ImportError as e:
        _unavailable(
            f"python-olm is not installed ({e}); "
            "pip install './sdk/python[interop]' (python-olm==3.2.16)"
        )
        raise


def _binary() -> Path:
    root = Path(__file__).resolve().parents[3]
    bin_dir = Path(os.environ.get("AGENTMESH_BIN_DIR", root / "target" / "debug"))
    path = bin_dir / "examples" / "olm_interop"
    if not (path.is_file() and os.access(path, os.X_OK)):
        _unavailable(f"{path} is not built; cargo build -p agentmesh-node --example olm_interop")
    return path


def b64(raw: bytes) -> str:
    """libolm's form: base64 without padding."""
    return base64.b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError(n)


def _cbor_text(s: str) -> bytes:
    raw = s.encode()
    return _cbor_head(3, len(raw)) + raw


def content_message(payload: dict[str, Any]) -> bytes:
    """``Content { kind: "message", body: <JSON> }`` as the node encodes it
    (SPEC.md §6.7): a map of two entries in declaration order, the JSON
    compact with sorted keys, as serde_json writes a JSON value."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return (
        _cbor_head(5, 2)
        + _cbor_text("kind")
        + _cbor_text("message")
        + _cbor_text("body")
        + _cbor_head(2, len(body))
        + body
    )


def plaintext(session: Any, message: Any) -> bytes:
    """Decrypts with libolm, bytes back exactly (python-olm hands out text)."""
    text: str = session.decrypt(message, unicode_errors="surrogateescape")
    return text.encode("utf-8", "surrogateescape")


def tampered(ciphertext_hex: str) -> str:
    """The same Olm message with the last byte of its MAC changed."""
    raw = bytearray(bytes.fromhex(ciphertext_hex))
    raw[-1] ^= 0x01
    return raw.hex()


class Node:
    """The ``olm_interop`` example: one JSON request, one JSON answer."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def call(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"no answer to {request['op']} in {ANSWER_TIMEOUT_S} s")
        if line is None:
            pytest.fail(f"olm_interop exited ({self.proc.wait()}) on {request['op']}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ok(self, **request: Any) -> dict[str, Any]:
        answer = self.call(**request)
        assert answer["ok"], answer
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=ANSWER_TIMEOUT_S)


@pytest.fixture
def olm() -> Any:
    return _olm()


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node(_binary())
    try:
        yield n
    finally:
        n.close()


def test_libolm_opens_what_the_node_seals_and_answers(olm: Any, node: Node) -> None:
    # libolm's account publishes its identity key and one one-time key.
    bob = olm.Account()
    bob.generate_one_time_keys(1)
    identity_key = bob.identity_keys["curve25519"]
    (one_time_key,) = bob.one_time_keys["curve25519"].values()

    # We seal the first message of a session to a card holding those keys:
    # an Olm pre-key message.
    hello = {"n": 1, "text": "hello libolm"}
    first = node.ok(
        op="seal_first",
        peer=BOB,
        identity_key=unb64(identity_key).hex(),
        one_time_key=unb64(one_time_key).hex(),
        payload=hello,
    )
    assert first["olm_type"] == 0
    assert bytes.fromhex(first["plaintext"]) == content_message(hello)

    # A changed MAC: libolm refuses it (and its one-time key stays).
    with pytest.raises(olm.OlmSessionError, match="BAD_MESSAGE_MAC"):
        forged = olm.OlmPreKeyMessage(b64(bytes.fromhex(tampered(first["ciphertext"]))))
        plaintext(olm.InboundSession(bob, forged), forged)

    # libolm opens an inbound session from it and decrypts our Content.
    prekey = olm.OlmPreKeyMessage(b64(bytes.fromhex(first["ciphertext"])))
    session = olm.InboundSession(bob, prekey)
    bob.remove_one_time_keys(session)
    assert plaintext(session, prekey) == content_message(hello)

    # libolm answers: a normal message, which our store opens.
    reply = {"answer": "hello node", "n": 2}
    answer = session.encrypt(content_message(reply))
    assert answer.message_type == 1
    opened = node.ok(op="receive", peer=BOB, olm_type=1, ciphertext=unb64(answer.ciphertext).hex())
    assert opened["payload"] == reply
    assert opened["kind"] == "message"

    # Our next message is a normal message (we have the answer): libolm
    # decrypts it.
    more = {"n": 3, "text": "and a normal message"}
    nxt = node.ok(op="seal", peer=BOB, payload=more)
    assert nxt["olm_type"] == 1
    assert plaintext(session, olm.OlmMessage(b64(bytes.fromhex(nxt["ciphertext"])))) == (
        content_message(more)
    )

    # A changed MAC on libolm's next message: our store refuses it and still
    # opens the genuine one after.
    last = session.encrypt(content_message({"n": 4}))
    refused = node.call(
        op="receive", peer=BOB, olm_type=1, ciphertext=tampered(unb64(last.ciphertext).hex())
    )
    assert not refused["ok"]
    assert refused["reason"] == "decrypt_failed", refused
    opened = node.ok(op="receive", peer=BOB, olm_type=1, ciphertext=unb64(last.ciphertext).hex())
    assert opened["payload"] == {"n": 4}


def test_the_node_opens_what_libolm_starts(olm: Any, node: Node) -> None:
    # libolm starts an outbound session to the keys of our card.
    card = node.ok(op="card")
    assert card["one_time_keys"], card
    carol = olm.Account()
    session = olm.OutboundSession(
        carol,
        b64(bytes.fromhex(card["identity_key"])),
        b64(bytes.fromhex(card["one_time_keys"][0])),
    )
    hello = {"from": "libolm", "n": 1}
    prekey = session.encrypt(content_message(hello))
    assert prekey.message_type == 0

    # A changed MAC: refused, and no session is set up.
    refused = node.call(
        op="receive",
        peer=CAROL,
        olm_type=0,
        ciphertext=tampered(unb64(prekey.ciphertext).hex()),
        first=True,
    )
    assert not refused["ok"]
    assert refused["reason"] == "decrypt_failed", refused

    # Our store opens the pre-key message as the first of a session.
    opened = node.ok(
        op="receive", peer=CAROL, olm_type=0, ciphertext=unb64(prekey.ciphertext).hex(), first=True
    )
    assert opened["payload"] == hello

    # We answer with a normal message; libolm decrypts it.
    reply = {"n": 2, "text": "hello libolm"}
    ours = node.ok(op="seal", peer=CAROL, payload=reply)
    assert ours["olm_type"] == 1
    msg = olm.OlmMessage(b64(bytes.fromhex(ours["ciphertext"])))
    assert plaintext(session, msg) == content_message(reply)

    # libolm's next message is a normal one now; we open it.
    more = {"n": 3}
    normal = session.encrypt(content_message(more))
    assert normal.message_type == 1
    opened = node.ok(
        op="receive", peer=CAROL, olm_type=1, ciphertext=unb64(normal.ciphertext).hex()
    )
    assert opened["payload"] == more


def test_libolm_decrypts_the_pre_key_message_of_the_vectors(olm: Any, node: Node) -> None:
    # vectors/olm.json keeps bob's vodozemac account from before alice's
    # first message; exported as a libolm pickle, libolm opens that message
    # (the one inside the KNOCK of vectors/knock.json) to its Content.
    root = Path(__file__).resolve().parents[3]
    fixture = json.loads((root / "vectors" / "olm.json").read_text())
    first = fixture["messages"][0]
    assert first["olm_type"] == 0 and first["receiver_state_kind"] == "account"
    key = "agentmesh vectors"
    exported = node.ok(op="libolm_account", account=first["receiver_state"], key=key)
    bob = olm.Account.from_pickle(exported["pickle"].encode(), key)
    assert unb64(bob.identity_keys["curve25519"]).hex() == fixture["bob_identity_key"]

    message = olm.OlmPreKeyMessage(b64(bytes.fromhex(first["ciphertext"])))
    session = olm.InboundSession(bob, message, b64(bytes.fromhex(fixture["alice_identity_key"])))
    assert plaintext(session, message).hex() == first["plaintext"]
    envelope = json.loads((root / "vectors" / "envelope.json").read_text())["vectors"][0]
    assert envelope["decoded"]["body"]["ciphertext_hex"] == first["ciphertext"]
