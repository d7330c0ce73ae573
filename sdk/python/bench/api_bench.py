"""Messages/s and p50/p99 latency of `send` through the local API with the
Python client, one message of 1 KiB at a time.

Run by `cargo bench -p agentmesh-node --bench api` on the same pair of nodes
it measures the Rust API on (it passes alice's data directory and bob's AMID),
or by hand against any running node:

    python3 sdk/python/bench/api_bench.py <alice's data dir> <bob's AMID> [messages]

Prints one line of figures.
"""

from __future__ import annotations

import sys
import time

from agentmesh import Client


def main() -> None:
    data_dir, to = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    payload = {"i": 0, "pad": "x" * 1000}
    latencies: list[float] = []
    with Client.from_data_dir(data_dir) as client:
        client.send(to, payload)  # warm-up: connection, session
        start = time.perf_counter()
        for i in range(n):
            payload["i"] = i
            t = time.perf_counter()
            client.send(to, payload)
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - start
    latencies.sort()

    def at(q: float) -> float:
        return latencies[min(int(len(latencies) * q), len(latencies) - 1)] * 1e3

    name = "Python client (Client.send, socket)"
    print(f"{name:<34} {n / total:>8.0f} msgs/s   p50 {at(0.5):>7.3f} ms   p99 {at(0.99):>7.3f} ms")


if __name__ == "__main__":
    main()
