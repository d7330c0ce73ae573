"""A whole AgentMesh network on this machine, for notebooks and tests."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._process import NodeProcess, find_binary, wait_for_api
from .agent import Agent
from .client import Client
from .errors import NodeStartFailed
from .models import API_FILE, JSON, ApiInfo

__all__ = ["LocalMesh", "agent_name"]

_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
#: The passphrase the mesh gives its throwaway identities.
MESH_PASSPHRASE = "agentmesh-devnet"


_meshes: weakref.WeakSet[LocalMesh] = weakref.WeakSet()


@atexit.register
def _stop_meshes() -> None:
    for m in list(_meshes):
        with contextlib.suppress(Exception):
            m.stop()


def agent_name(i: int) -> str:
    """The name of agent ``i``: alice, bob, carol, ..., then ``agent8`` on."""
    return _NAMES[i] if i < len(_NAMES) else f"agent{i}"


class LocalMesh:
    """A local AgentMesh network of real processes: one bootstrap node (with
    its registry), one mailbox relay and ``n`` agents, each in its own
    temporary data directory, all on loopback.

    >>> with LocalMesh(n=2) as mesh:                      # doctest: +SKIP
    ...     alice, bob = mesh.agents
    ...     alice.send(bob, {"text": "hello"})

    ``names`` names the agents (default alice, bob, carol, ...).
    ``policies`` maps an agent's name to the text of a KNOCK policy (TOML)
    it runs with; ``private`` names agents reachable only through the relay;
    ``extra_args`` maps a name to more ``agentmesh-sim agent`` arguments.
    Data lives under ``root`` (default: a new temporary directory, removed
    by :meth:`stop` unless ``keep``). Every process is stopped by
    :meth:`stop`, on leaving the ``with`` block, and when the interpreter
    exits.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        names: Sequence[str] | None = None,
        policies: Mapping[str, str] | None = None,
        private: Sequence[str] = (),
        extra_args: Mapping[str, Sequence[str]] | None = None,
        root: str | os.PathLike[str] | None = None,
        keep: bool = False,
        timeout: float = 120.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if names is None:
            names = [agent_name(i) for i in range(n)]
        if len(set(names)) != len(names):
            raise ValueError("agent names must differ")
        self.exe = Path(binary) if binary is not None else find_binary("agentmesh-sim")
        self.timeout = timeout
        self._own_root = root is None
        self.keep = keep
        self.root = (
            Path(tempfile.mkdtemp(prefix="agentmesh-mesh-"))
            if root is None
            else Path(root).expanduser()
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self._policies = dict(policies or {})
        self._private = set(private)
        self._extra = {k: list(v) for k, v in (extra_args or {}).items()}
        self._procs: dict[str, NodeProcess] = {}
        self._lock = threading.Lock()
        self.agents: list[Agent] = []
        self.bootstrap_addr = ""
        self.registry_url = ""
        self.relay_addr = ""
        self._stopped = False
        _meshes.add(self)
        try:
            self._start_infra()
            # Spawned from this thread (a child may be tied to the thread
            # that forked it), waited for together.
            spawned = [(name, self._spawn_agent(name)) for name in names]
            with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
                self.agents = list(pool.map(lambda s: self._ready_agent(*s), spawned))
        except BaseException:
            self.stop()
            raise

    # Processes.

    def _spawn(self, name: str, args: Sequence[str], data_dir: Path) -> NodeProcess:
        p = NodeProcess(
            name,
            [str(self.exe), *args],
            data_dir,
            env={"AGENTMESH_PASSPHRASE": MESH_PASSPHRASE},
        )
        with self._lock:
            old = self._procs.get(name)
            if old is not None and old.alive:
                old.terminate()
            self._procs[name] = p
        return p

    def _start_infra(self) -> None:
        d = self.root / "bootstrap"
        boot = self._spawn("bootstrap", ["bootstrap", "--data-dir", str(d)], d)
        ready = boot.wait_event("ready", self.timeout)
        addrs = ready.get("addrs")
        if not isinstance(addrs, list) or not addrs or not isinstance(addrs[0], str):
            raise NodeStartFailed("the bootstrap printed no address")
        self.bootstrap_addr = addrs[0]
        registry = ready.get("registry")
        self.registry_url = registry if isinstance(registry, str) else ""
        d = self.root / "relay"
        relay = self._spawn(
            "relay", ["relay", "--data-dir", str(d), "--bootstrap", self.bootstrap_addr], d
        )
        ready = relay.wait_event("ready", self.timeout)
        addrs = ready.get("addrs")
        if not isinstance(addrs, list) or not addrs or not isinstance(addrs[0], str):
            raise NodeStartFailed("the relay printed no address")
        self.relay_addr = addrs[0]

    def _agent_args(self, name: str, d: Path) -> list[str]:
        args = [
            "agent",
            "--data-dir",
            str(d),
            "--bootstrap",
            self.bootstrap_addr,
            "--relay",
            self.relay_addr,
            "--registry",
            self.bootstrap_addr,
        ]
        if name in self._private:
            args.append("--private")
        policy = self._policies.get(name)
        if policy is not None:
            f = self.root / f"{name}.policy.toml"
            f.write_text(policy, encoding="utf-8")
            args += ["--policy", str(f)]
        args += self._extra.get(name, [])
        return args

    def _spawn_agent(self, name: str) -> NodeProcess:
        d = self.root / name
        # A SIGKILLed node leaves its api.json: never take that one for the new.
        with contextlib.suppress(OSError):
            (d / API_FILE).unlink()
        return self._spawn(name, self._agent_args(name, d), d)

    def _wait_ready(self, p: NodeProcess) -> ApiInfo:
        deadline = time.monotonic() + self.timeout
        p.wait_event("started", self.timeout)
        p.wait_event("card_published", max(1.0, deadline - time.monotonic()), stored_remotely=True)
        return wait_for_api(p.data_dir, max(1.0, deadline - time.monotonic()), p)

    def _ready_agent(self, name: str, p: NodeProcess) -> Agent:
        info = self._wait_ready(p)
        agent = Agent(Client.from_info(info), name=name, data_dir=p.data_dir, process=p)
        agent._on_stop = lambda: self._terminate(name)
        return agent

    def _new_agent(self, name: str) -> Agent:
        return self._ready_agent(name, self._spawn_agent(name))

    def _terminate(self, name: str) -> None:
        with self._lock:
            p = self._procs.get(name)
        if p is not None:
            p.terminate()

    # Using the mesh.

    def __getitem__(self, key: int | str) -> Agent:
        """An agent by index or by name."""
        if isinstance(key, int):
            return self.agents[key]
        for a in self.agents:
            if a.name == key:
                return a
        raise KeyError(key)

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def process(self, agent: Agent | str) -> NodeProcess:
        """The process of an agent (or of ``"bootstrap"``, ``"relay"``): its
        JSON event lines are in ``.lines()`` and ``.wait_event(...)``."""
        name = agent if isinstance(agent, str) else agent.name
        return self._procs[name]

    def add_agent(
        self,
        name: str | None = None,
        *,
        policy: str | None = None,
        private: bool = False,
        extra_args: Sequence[str] = (),
    ) -> Agent:
        """Starts one more agent in the mesh (with a KNOCK policy, reachable
        only through the relay, or with more node flags)."""
        name = name or agent_name(len(self.agents))
        if any(a.name == name for a in self.agents):
            raise ValueError(f"there is already an agent {name}")
        if policy is not None:
            self._policies[name] = policy
        if private:
            self._private.add(name)
        if extra_args:
            self._extra[name] = list(extra_args)
        agent = self._new_agent(name)
        self.agents.append(agent)
        return agent

    def stop_agent(self, agent: Agent | str) -> None:
        """Stops an agent's node (SIGTERM): it goes offline. Mail sent to it
        meanwhile waits in its relay mailbox; :meth:`start_agent` brings it
        back with the same identity and data."""
        a = agent if isinstance(agent, Agent) else self[agent]
        a._stop_loop.set()
        for r in a._runners:
            r.stop()
        a._runners.clear()
        self._terminate(a.name)

    def start_agent(self, agent: Agent | str) -> Agent:
        """Starts a stopped agent again (same data directory, same AMID);
        the same :class:`Agent` object then talks to the new node."""
        a = agent if isinstance(agent, Agent) else self[agent]
        p = self._spawn_agent(a.name)
        a._reattach(self._wait_ready(p), p)
        a._on_stop = lambda: self._terminate(a.name)
        return a

    def restart_agent(self, agent: Agent | str) -> Agent:
        """:meth:`stop_agent` then :meth:`start_agent`."""
        self.stop_agent(agent)
        return self.start_agent(agent)

    def lines(self, agent: Agent | str) -> list[JSON]:
        """The JSON lines an agent's process printed so far."""
        return self.process(agent).lines()

    def stop(self) -> None:
        """Stops every process (agents first) and removes the temporary data."""
        if self._stopped:
            return
        self._stopped = True
        _meshes.discard(self)
        for a in self.agents:
            a._stop_loop.set()
            for r in a._runners:
                r._stop.set()
        with self._lock:
            procs = list(self._procs.items())
        order = [p for n, p in procs if n not in ("relay", "bootstrap")]
        order += [p for n, p in procs if n == "relay"]
        order += [p for n, p in procs if n == "bootstrap"]
        # All asked at once, then waited for (no thread pool: this also runs
        # at interpreter exit, when pools take no more work).
        for p in order:
            p.signal_stop()
        for p in order:
            p.terminate(timeout=10)
        for a in self.agents:
            a._on_stop = None
            with contextlib.suppress(Exception):
                a.client.close()
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __repr__(self) -> str:
        names = ", ".join(a.name for a in self.agents)
        return f"<LocalMesh {self.root} [{names}]>"
