"""The :class:`Agent`: one AgentMesh node seen from Python.

>>> from agentmesh import Agent
>>> alice = Agent.start("alice", bootstrap="/ip4/…/p2p/…")      # doctest: +SKIP
>>> @alice.on_message
... def handle(msg):
...     msg.reply({"text": "got it"})
>>> alice.send(bob_amid, {"text": "hello"})                      # doctest: +SKIP
>>> alice.run_forever()                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from ._process import NodeProcess, find_binary, probe, wait_for_api
from .client import Client, _amid
from .errors import AgentMeshError, NodeNotRunning
from .models import (
    API_FILE,
    JSON,
    ApiInfo,
    Card,
    DashboardLink,
    Event,
    Message,
    Peer,
    PolicyCheck,
    Receipt,
    SchemaCatalog,
    StreamResult,
)

__all__ = ["Agent", "Handler", "Runner"]

log = logging.getLogger("agentmesh")

#: A message handler: called with each message; raising releases it.
Handler = Callable[[Message], Any]
#: The passphrase file :meth:`Agent.start` creates when none is given.
PASSPHRASE_FILE = "passphrase"
_KEYSTORE = "identity.keystore"


@dataclass(frozen=True)
class _Filter:
    """Which messages a handler takes: of these kinds, from these senders
    (``None``: any)."""

    kinds: frozenset[str] | None = None
    senders: frozenset[str] | None = None

    def matches(self, m: Message) -> bool:
        return (self.kinds is None or m.kind in self.kinds) and (
            self.senders is None or m.from_ in self.senders
        )


def _as_list(v: str | Sequence[str] | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s for s in v.split(",") if s]
    return list(v)


class Runner:
    """A message loop running on a thread (see :meth:`Agent.run_in_background`).
    Use it as a context manager, or call :meth:`stop`."""

    def __init__(self, agent: Agent, poll: float, lease: float, max: int) -> None:
        self.agent = agent
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(poll, lease, max), name=f"agentmesh-{agent.name}", daemon=True
        )
        self._thread.start()

    def _run(self, poll: float, lease: float, max: int) -> None:
        try:
            self.agent._loop(self._stop, poll, lease, max)
        except BaseException as e:  # reported by stop() / join()
            self.error = e
            log.exception("message loop of %s stopped", self.agent.name)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Asks the loop to stop and waits for it (it ends its current poll)."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Agent:
    """An AgentMesh agent: a running node and a client of its local API.

    Get one with :meth:`start` (start a node, or attach to the one already
    running in that data directory), :meth:`attach`, or from a
    :class:`~agentmesh.LocalMesh`.
    """

    def __init__(
        self,
        client: Client,
        *,
        name: str | None = None,
        data_dir: Path | None = None,
        process: NodeProcess | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.data_dir = data_dir
        self.name = name or (data_dir.name if data_dir is not None else "agent")
        self.process = process
        self._on_stop = on_stop
        self._handlers: list[tuple[Handler, _Filter]] = []
        self._amid = client.amid
        self._runners: list[Runner] = []
        self._stop_loop = threading.Event()
        #: Id of the last event :meth:`events` yielded (it resumes after it).
        self.last_event_id: int | None = None
        #: Events the node no longer kept when :meth:`events` asked for them.
        self.events_dropped = 0

    # Getting an agent.

    @classmethod
    def attach(
        cls,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        wait: float = 0.0,
        use_socket: bool = False,
    ) -> Agent:
        """The agent whose node runs with data directory ``data_dir``
        (default ``$AGENTMESH_HOME`` or ``~/.agentmesh``), from its
        ``api.json``. Waits up to ``wait`` seconds for the node to come up;
        raises :class:`NodeNotRunning` when it does not answer."""
        from .models import default_data_dir

        d = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        if wait > 0:
            info = wait_for_api(d, wait)
        else:
            info = ApiInfo.load(d)
            if not probe(info):
                raise NodeNotRunning(
                    f"the node of {d} does not answer at {info.url or info.socket} "
                    f"(a {API_FILE} left by a node that crashed?)"
                )
        return cls(Client.from_info(info, use_socket=use_socket), name=name, data_dir=d)

    @classmethod
    def start(
        cls,
        name: str | None = None,
        *,
        bootstrap: str | Sequence[str] | None = None,
        relays: str | Sequence[str] | None = None,
        registry: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        passphrase: str | None = None,
        listen: str | Sequence[str] | None = None,
        policy: str | os.PathLike[str] | None = None,
        api: str | None = None,
        extra_args: Sequence[str] = (),
        detach: bool = False,
        wait_published: bool | None = None,
        timeout: float = 90.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> Agent:
        """Starts a node (``agentmesh run``) with its own data directory, or
        attaches to the node already running there.

        The data directory is ``data_dir``, else ``~/.agentmesh/<name>``. The
        identity is created on first start; its keystore is encrypted with
        ``passphrase``, else ``$AGENTMESH_PASSPHRASE`` /
        ``$AGENTMESH_PASSPHRASE_FILE``, else a random passphrase kept in the
        file ``passphrase`` of the data directory (mode 0600).

        ``bootstrap``, ``relays`` and ``listen`` take multiaddrs (a list or a
        comma-separated string); ``registry`` is the registry's node. The node
        stops with :meth:`stop` or when this interpreter exits, unless
        ``detach`` (then it keeps running and a later :meth:`start` attaches
        to it). Waits up to ``timeout`` seconds for the API and, when
        ``wait_published`` (default: when there is a bootstrap), for the
        agent's card to be stored in the DHT.
        """
        if data_dir is not None:
            d = Path(data_dir).expanduser()
        elif name is not None:
            d = Path.home() / ".agentmesh" / name
        else:
            from .models import default_data_dir

            d = default_data_dir()
        name = name or d.name
        # Attach when a node already runs there.
        stale: ApiInfo | None = None
        with contextlib.suppress(AgentMeshError):
            info = ApiInfo.load(d)
            if probe(info):
                log.info("attaching to the node already running in %s", d)
                return cls(Client.from_info(info), name=name, data_dir=d)
            stale = info
        if stale is not None:
            with contextlib.suppress(OSError):
                (d / API_FILE).unlink()

        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            d.chmod(0o700)
        env = cls._passphrase_env(d, passphrase)
        exe = Path(binary) if binary is not None else find_binary("agentmesh")
        bootstraps = _as_list(bootstrap)
        argv: list[str] = [str(exe), "--data-dir", str(d), "--json", "run"]
        for b in bootstraps:
            argv += ["--bootstrap", b]
        for r in _as_list(relays):
            argv += ["--relay", r]
        if registry:
            argv += ["--registry", registry]
        for addr in _as_list(listen):
            argv += ["--listen", addr]
        if policy is not None:
            argv += ["--policy", str(Path(policy).resolve())]
        if api is not None:
            argv += ["--api", api]
        argv += list(extra_args)
        proc = NodeProcess(
            name,
            argv,
            d,
            env=env,
            stdout_file=d / "node.log",
            stderr_file=d / "node.err.log",
            detach=detach,
        )
        try:
            if wait_published is None:
                wait_published = bool(bootstraps)
            deadline = time.monotonic() + timeout
            info = wait_for_api(d, timeout, proc)
            if wait_published:
                left = max(1.0, deadline - time.monotonic())
                proc.wait_event("card_published", left, stored_remotely=True)
        except BaseException:
            proc.terminate()
            raise
        agent = cls(Client.from_info(info), name=name, data_dir=d, process=proc)
        if not detach:

            def stop_node() -> None:
                proc.terminate()

            agent._on_stop = stop_node
        # Detached, the node outlives this interpreter: agent.stop() leaves
        # it running (agent.process.terminate() stops it).
        return agent

    @staticmethod
    def _passphrase_env(d: Path, passphrase: str | None) -> dict[str, str]:
        if passphrase is not None:
            return {"AGENTMESH_PASSPHRASE": passphrase}
        if os.environ.get("AGENTMESH_PASSPHRASE") or os.environ.get("AGENTMESH_PASSPHRASE_FILE"):
            return {}
        f = d / PASSPHRASE_FILE
        if not f.exists():
            if (d / _KEYSTORE).exists():
                raise AgentMeshError(
                    f"{d} holds an identity but no passphrase was given: pass passphrase=... "
                    "or set AGENTMESH_PASSPHRASE",
                    code="no_passphrase",
                )
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
        return {"AGENTMESH_PASSPHRASE_FILE": str(f)}

    def _reattach(self, info: ApiInfo, process: NodeProcess | None = None) -> None:
        """Points this agent at a restarted node (new address and token)."""
        old = self.client
        self.client = Client.from_info(info, timeout=old.timeout)
        old.close()
        if process is not None:
            self.process = process
        if info.amid:
            self._amid = info.amid

    # Who.

    @property
    def amid(self) -> str:
        """This agent's AMID (its address in the network)."""
        if self._amid is None:
            st = self.client.status()
            amid = st.get("amid")
            if not isinstance(amid, str):
                raise AgentMeshError("the node did not say its AMID", code="bad_response")
            self._amid = amid
        return self._amid

    @property
    def a2a_url(self) -> str | None:
        """Base URL of the node's A2A gateway (``a2a`` in ``api.json``), if any."""
        return self.client.info.a2a

    def __repr__(self) -> str:
        return f"<Agent {self.name} {self._amid or '?'}>"

    # Messages out.

    @overload
    def send(
        self,
        to: str | Agent,
        payload: Any,
        *,
        capability: str | None = ...,
        schema: str | None = ...,
        wait: Literal[True] = ...,
    ) -> Receipt: ...

    @overload
    def send(
        self,
        to: str | Agent,
        payload: Any,
        *,
        capability: str | None = ...,
        schema: str | None = ...,
        wait: Literal[False],
    ) -> str: ...

    def send(
        self,
        to: str | Agent,
        payload: Any,
        *,
        capability: str | None = None,
        schema: str | None = None,
        wait: bool = True,
    ) -> Receipt | str:
        """Sends ``payload`` (any JSON value; a string is sent as
        ``{"text": ...}``) to an AMID or an :class:`Agent`. Returns the
        :class:`Receipt` (``id``, ``to``, ``path``, ``knocked``, ``session``)
        once delivered or deposited in a relay mailbox; with ``wait=False``
        the message id at once. ``schema`` names the message schema the
        payload follows (see :meth:`Client.send` and :meth:`schemas_of`)."""
        if wait:
            return self.client.send(_amid(to), payload, capability=capability, schema=schema)
        return self.client.send(
            _amid(to), payload, capability=capability, schema=schema, wait=False
        )

    def request(
        self,
        to: str | Agent,
        payload: Any,
        *,
        capability: str | None = None,
        schema: str | None = None,
        timeout: float = 30.0,
    ) -> Message:
        """Sends a request and returns the reply :class:`Message`
        (``schema`` as for :meth:`send`)."""
        return self.client.request(
            _amid(to), payload, capability=capability, schema=schema, timeout=timeout
        )

    def reply(self, msg: Message, payload: Any, *, same_session: bool = False) -> Receipt:
        """Answers ``msg`` (same as ``msg.reply(payload)``)."""
        session = msg.session if same_session else None
        return self.client.reply(msg.from_, msg.id, payload, session=session)

    def end(self, amid: str | Agent) -> str | None:
        """Ends the conversation with ``amid``; returns the session that ended."""
        return self.client.end(_amid(amid))

    def stream(
        self,
        to: str | Agent,
        data: bytes | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        chunk_size: int | None = None,
        capability: str | None = None,
    ) -> StreamResult:
        """Sends ``data`` (or the file at ``path``) as a stream of encrypted chunks."""
        return self.client.stream(
            _amid(to), data, path=path, chunk_size=chunk_size, capability=capability
        )

    # Messages in.

    @overload
    def on_message(self, handler: Handler) -> Handler: ...

    @overload
    def on_message(
        self,
        handler: None = None,
        *,
        kind: str | Iterable[str] | None = None,
        sender: str | Agent | Iterable[str | Agent] | None = None,
    ) -> Callable[[Handler], Handler]: ...

    def on_message(
        self,
        handler: Handler | None = None,
        *,
        kind: str | Iterable[str] | None = None,
        sender: str | Agent | Iterable[str | Agent] | None = None,
    ) -> Handler | Callable[[Handler], Handler]:
        """Registers a message handler (usable as a decorator, bare or with
        filters). Several handlers may be registered: each runs, in
        registration order, on every message :meth:`run_forever` (or
        :meth:`run_in_background`, :meth:`process_pending`) reads that
        passes its filters; the message is acknowledged when they all
        return, released for another try when one raises.

        ``kind`` keeps messages of that kind (``"message"``, ``"request"``,
        ``"reply"``, or several); ``sender`` keeps messages from that agent
        (an AMID, a petname — resolved now, see :meth:`set_name` — an
        :class:`Agent`, or several)::

            @agent.on_message(kind="request", sender="bob")
            def answer(msg): msg.reply({"ok": True})
        """
        filt = _Filter(
            kinds=None if kind is None else frozenset([kind] if isinstance(kind, str) else kind),
            senders=None if sender is None else frozenset(self._senders(sender)),
        )

        def register(h: Handler) -> Handler:
            self._handlers.append((h, filt))
            return h

        if handler is not None:
            return register(handler)
        return register

    def _senders(self, sender: str | Agent | Iterable[str | Agent]) -> list[str]:
        items: list[str | Agent] = [sender] if isinstance(sender, (str, Agent)) else list(sender)
        names: dict[str, str] | None = None
        out = []
        for s in items:
            amid = _amid(s)
            if not amid.startswith("am") or len(amid) < 40:
                if names is None:
                    names = self.names()
                amid = names.get(amid, amid)
            out.append(amid)
        return out

    def messages(self, *, wait: float = 0.0, max: int = 32, lease: float = 30.0) -> list[Message]:
        """One read of the inbox (see :meth:`Client.messages`); acknowledge
        what you handled with :meth:`ack` or ``msg.ack()``."""
        return self.client.messages(wait=wait, max=max, lease=lease)

    def ack(self, msgs: Iterable[str | Message]) -> int:
        """Acknowledges messages (the node forgets them)."""
        return self.client.ack(msgs)

    def release(self, msgs: Iterable[str | Message]) -> int:
        """Hands messages out again at once."""
        return self.client.release(msgs)

    def _dispatch(self, msgs: list[Message]) -> int:
        handled = 0
        for i, m in enumerate(msgs):
            try:
                for h, f in self._handlers:
                    if f.matches(m):
                        h(m)
            except Exception:
                log.exception("handler failed on message %s from %s; released", m.id, m.from_)
                self._quietly(self.client.release, [m.id])
                continue
            except BaseException:
                # Interrupted: give back this message and those not handled.
                self._quietly(self.client.release, [x.id for x in msgs[i:]])
                raise
            self._quietly(self.client.ack, [m.id])
            handled += 1
        return handled

    @staticmethod
    def _quietly(f: Callable[[list[str]], Any], ids: list[str]) -> None:
        """Acknowledges or releases; a refusal is logged (the lease may have
        ended meanwhile), a node that is gone is raised."""
        try:
            f(ids)
        except NodeNotRunning:
            raise
        except AgentMeshError as e:
            log.warning("could not %s %s: %s", getattr(f, "__name__", "?"), ids, e)

    def process_pending(self, *, wait: float = 0.0, max: int = 32, lease: float = 30.0) -> int:
        """Reads the inbox once (waiting up to ``wait`` seconds) and runs the
        handlers on what came; returns how many were handled."""
        if not self._handlers:
            raise RuntimeError("no handler: register one with @agent.on_message")
        return self._dispatch(self.messages(wait=wait, max=max, lease=lease))

    def _loop(self, stop: threading.Event, poll: float, lease: float, max: int) -> None:
        if not self._handlers:
            raise RuntimeError("no handler: register one with @agent.on_message")
        while not stop.is_set() and not self._stop_loop.is_set():
            try:
                msgs = self.messages(wait=poll, max=max, lease=lease)
            except NodeNotRunning:
                if stop.is_set() or self._stop_loop.is_set():
                    return
                raise
            self._dispatch(msgs)

    def run_forever(self, *, poll: float = 30.0, lease: float = 30.0, max: int = 32) -> None:
        """Runs the handlers on every message until :meth:`stop` or Ctrl-C
        (long-polls the inbox ``poll`` seconds at a time)."""
        self._stop_loop.clear()
        with contextlib.suppress(KeyboardInterrupt):
            self._loop(threading.Event(), poll, lease, max)

    def run_in_background(self, *, poll: float = 2.0, lease: float = 30.0, max: int = 32) -> Runner:
        """Runs the handlers on a thread; returns the :class:`Runner` (a
        context manager; ``runner.stop()`` ends it)."""
        self._stop_loop.clear()
        r = Runner(self, poll, lease, max)
        self._runners.append(r)
        return r

    # Events.

    def events(
        self,
        since: int | None = None,
        *,
        wait: float = 30.0,
        idle_timeout: float | None = None,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """Node events, as they happen (long-polls ``GET /v1/events``).

        Starts after event id ``since``; without it, after the last event a
        previous iteration yielded (:attr:`last_event_id`), or with the
        oldest event the node keeps. A new iterator therefore resumes where
        the last one stopped, without losing or repeating an event. Ends
        when ``idle_timeout`` seconds pass without an event (never, by
        default). Events the node no longer had are counted in
        :attr:`events_dropped`.
        """
        cursor = since if since is not None else self.last_event_id
        idle_since = time.monotonic()
        while True:
            w = wait
            if idle_timeout is not None:
                left = idle_timeout - (time.monotonic() - idle_since)
                if left <= 0:
                    return
                w = min(wait, left)
            batch = self.client.events(since=cursor, wait=w, limit=limit)
            if batch.dropped:
                self.events_dropped += batch.dropped
                log.warning("%d events were no longer kept by the node", batch.dropped)
                if not batch.events:
                    # Only a gap (an id of an earlier run of the node): go
                    # on past it, so that it is counted once.
                    cursor = batch.last_id
                    self.last_event_id = batch.last_id
            if not batch.events:
                continue
            idle_since = time.monotonic()
            for e in batch.events:
                cursor = e.id
                self.last_event_id = e.id
                yield e

    # The node.

    def status(self) -> JSON:
        """The node's status."""
        return self.client.status()

    def peers(self) -> list[Peer]:
        """Agents the node knows (the seed's ``list_peers``): petname,
        presence from their last card, last seen, path, sessions."""
        return self.client.peers()

    def export_card(self) -> Card:
        """This agent's signed card; ``str(card)`` is the string to hand out
        of band (the seed's ``public_bundle``)."""
        return self.client.export_card()

    def import_card(
        self, card: str | bytes | os.PathLike[str] | Card, *, name: str | None = None
    ) -> Card:
        """Imports another agent's card (the seed's ``connect_with_bundle``):
        verified, kept by the node, and used to reach that agent with no
        DHT. ``name`` also gives it a petname."""
        return self.client.import_card(card, name=name)

    def set_name(self, name: str, amid: str | Agent) -> None:
        """Names an agent locally; the name is then taken wherever an AMID is."""
        self.client.set_name(name, _amid(amid))

    def remove_name(self, name: str) -> str:
        """Forgets a petname; returns the AMID it named."""
        return self.client.remove_name(name)

    def names(self) -> dict[str, str]:
        """Every petname and the AMID it names."""
        return self.client.names()

    def sessions(self) -> list[JSON]:
        """The node's sessions."""
        return self.client.sessions()

    def lookup(self, amid: str | Agent) -> JSON:
        """An agent's card, from the DHT."""
        return self.client.lookup(_amid(amid))

    def schemas(self) -> SchemaCatalog:
        """The message schemas this agent's node knows, and those it takes
        per capability (see :meth:`Client.schemas`)."""
        return self.client.schemas()

    def schemas_of(self, amid: str | Agent) -> dict[str, list[str]]:
        """The message schemas another agent takes, per capability, from its
        card: ``{}`` when it lists none."""
        return self.client.schemas_of(_amid(amid))

    def block(self, amid: str | Agent) -> None:
        """Refuses this agent from now on."""
        self.client.block(_amid(amid))

    def close(self, amid: str | Agent) -> int:
        """Ends every session with ``amid``; returns how many."""
        return self.client.close_sessions(_amid(amid))

    def disconnect(self, amid: str | Agent) -> None:
        """Closes the connections to ``amid`` (sessions stay)."""
        self.client.disconnect(_amid(amid))

    def check_policy(
        self,
        capability: str,
        *,
        from_: str | Agent | None = None,
        action: str | None = None,
        tier: str | None = None,
        reputation: float | None = None,
        policy: str | None = None,
    ) -> PolicyCheck:
        """What this agent's KNOCK policy (or ``policy``, TOML text) would
        decide on a KNOCK from ``from_`` with this intent; nothing is sent."""
        return self.client.check_policy(
            capability,
            from_=None if from_ is None else _amid(from_),
            action=action,
            tier=tier,
            reputation=reputation,
            policy=policy,
        )

    def set_policy(self, toml_text: str) -> str:
        """Puts a KNOCK policy (TOML text) in force at once; returns its hash
        (the policy file, if any, is read again on a reload or restart)."""
        return self.client.set_policy(toml_text)

    def register(self, name: str | None = None, capabilities: Sequence[str] | None = None) -> JSON:
        """Registers this agent with its node's registry, under ``name``
        (default: the agent's name), offering ``capabilities`` (default: the
        card's); returns the registry's answer."""
        return self.client.register(self.name if name is None else name, capabilities)

    def search(
        self,
        capability: str,
        *,
        tier_min: str | None = None,
        reputation_min: float | None = None,
        limit: int | None = None,
    ) -> list[JSON]:
        """Agents of the registry offering ``capability`` (or one under it)."""
        return self.client.search(
            capability, tier_min=tier_min, reputation_min=reputation_min, limit=limit
        )

    def dashboard_link(self) -> DashboardLink:
        """A one-time link that logs a browser into this node's dashboard."""
        return self.client.dashboard_link()

    def metrics(self) -> str:
        """This node's metrics, in the Prometheus text format."""
        return self.client.metrics()

    def timeseries(self) -> JSON:
        """The last hour by minute: messages by path, KNOCK decisions, and
        the delivery latency histogram (see :meth:`Client.timeseries`)."""
        return self.client.timeseries()

    def registry_standing(self) -> JSON:
        """This agent's tier and reputation at the registry, as the node
        last saw them (see :meth:`Client.registry_standing`)."""
        return self.client.registry_standing()

    def diagnostics(self, *, punch: str | Agent | None = None) -> JSON:
        """What ``agentmesh doctor`` checks, with a fix for each failure;
        with ``punch``, whether a hole punch to that agent goes direct
        (see :meth:`Client.diagnostics`)."""
        return self.client.diagnostics(punch=None if punch is None else _amid(punch))

    def presence(self, state: str) -> None:
        """Sets presence: ``online``, ``away``, ``dnd`` or ``offline``."""
        self.client.presence(state)

    def kill(self, amid: str | Agent | None = None) -> None:
        """The kill switch, for one agent or (``None``) everyone."""
        self.client.kill(None if amid is None else _amid(amid))

    def kill_clear(self) -> None:
        """Turns the kill switch for everyone off."""
        self.client.kill_clear()

    def stop(self) -> None:
        """Stops the message loops and, when this agent started its node
        (:meth:`start`, :class:`~agentmesh.LocalMesh`), the node."""
        self._stop_loop.set()
        for r in self._runners:
            r.stop()
        self._runners.clear()
        if self._on_stop is not None:
            on_stop, self._on_stop = self._on_stop, None
            on_stop()
        self.client.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
