"""A policy that refuses: bob runs a KNOCK policy that denies finance
requests, and blocks carol outright.

    python examples/03_policy_refuses.py
"""

from __future__ import annotations

from agentmesh import LocalMesh, Rejected

BOB_POLICY = """
preset = "default"

[[intent]]
capability = "finance/*"
action = "*"
allow = false
"""


def main() -> None:
    with LocalMesh(n=3, policies={"bob": BOB_POLICY}) as mesh:
        alice, bob, carol = mesh.agents

        try:
            alice.send(bob, {"text": "wire 1000 EUR"}, capability="finance/payments")
            raise SystemExit("bob's policy should have refused this")
        except Rejected as e:
            print(f"alice -> bob (finance/payments): refused, reason {e.reason!r}")
            assert e.reason == "intent_denied"

        r = alice.send(bob, {"text": "just chatting"}, capability="communication/messaging")
        print(f"alice -> bob (communication/messaging): delivered via {r.path}")

        bob.block(carol)
        try:
            carol.send(bob, {"text": "hello?"})
            raise SystemExit("bob blocked carol; this should have been refused")
        except Rejected as e:
            print(f"carol -> bob: refused, reason {e.reason!r}")
            assert e.reason == "blocked"
        print("ok: the policy refused what it should")


if __name__ == "__main__":
    main()
