"""A request/response service: bob answers weather requests, alice asks.

python examples/02_request_response.py
"""

from __future__ import annotations

from agentmesh import LocalMesh, Message

FORECASTS = {"paris": "sunny, 21°C", "oslo": "snow, -4°C"}


def main() -> None:
    with LocalMesh(n=2) as mesh:
        alice, bob = mesh.agents

        @bob.on_message
        def weather_service(msg: Message) -> None:
            if not msg.is_request:
                return
            city = str(msg.payload.get("city", "")).lower()
            forecast = FORECASTS.get(city, "unknown city")
            print(f"[bob]   request from alice: {msg.payload} -> {forecast}")
            msg.reply({"city": city, "forecast": forecast})

        with bob.run_in_background():
            for city in ("Paris", "Oslo"):
                reply = alice.request(bob, {"city": city}, capability="research/weather")
                print(f"[alice] {city}: {reply.payload['forecast']}  (reply to {reply.reply_to})")
                assert reply.payload["forecast"] == FORECASTS[city.lower()]
        print("ok: requests answered")


if __name__ == "__main__":
    main()
