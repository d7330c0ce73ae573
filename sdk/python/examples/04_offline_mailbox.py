"""Offline delivery: bob is offline, alice's message waits (sealed) in his
relay mailbox, and bob gets it when he comes back.

    python examples/04_offline_mailbox.py
"""

from __future__ import annotations

import time

from agentmesh import LocalMesh


def main() -> None:
    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents
        alice.send(bob, {"text": "hi bob, are you there?"})
        bob.ack(bob.messages(wait=30))

        mesh.stop_agent(bob)
        print("bob is offline")
        receipt = alice.send(bob, {"text": "bob, this waits in your mailbox"})
        print(f"alice -> bob: {receipt.path} (stored at the relay, end-to-end encrypted)")
        assert receipt.path == "mailbox", receipt.path

        mesh.start_agent(bob)
        print("bob is back")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            msgs = bob.messages(wait=10)
            bob.ack(msgs)
            mine = [m for m in msgs if m.id == receipt.id]
            if mine:
                print(f"bob got: {mine[0].text!r} via {mine[0].path}")
                break
        else:
            raise SystemExit("bob did not get the message from his mailbox")
        print("ok: delivered from the relay mailbox")


if __name__ == "__main__":
    main()
