"""Two agents talking: alice greets bob, bob answers.

python examples/01_two_agents.py
"""

from __future__ import annotations

import queue

from agentmesh import LocalMesh, Message


def main() -> None:
    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents
        print(f"alice is {alice.amid}")
        print(f"bob   is {bob.amid}")

        @bob.on_message
        def bob_handles(msg: Message) -> None:
            print(f"[bob]   <- alice: {msg.text}  (via {msg.path})")
            msg.reply({"text": "Hi Alice, got your message!"})

        answers: queue.Queue[Message] = queue.Queue()

        @alice.on_message
        def alice_handles(msg: Message) -> None:
            print(f"[alice] <- bob:   {msg.text}")
            answers.put(msg)

        with bob.run_in_background(), alice.run_in_background():
            receipt = alice.send(bob, {"text": "Hello, Bob! This is end-to-end encrypted."})
            how = "KNOCK accepted, session opened" if receipt.knocked else "session cached"
            print(f"delivered {receipt.id} via {receipt.path} ({how})")
            answer = answers.get(timeout=60)
            assert answer.from_ == bob.amid
        print("ok: two agents talked")


if __name__ == "__main__":
    main()
