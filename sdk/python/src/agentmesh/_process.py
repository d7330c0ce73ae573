"""Node processes: finding the binaries, starting them, reading the JSON
event lines they print, waiting for ``api.json``, stopping them."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from .errors import AgentMeshError, BadResponse, BinaryNotFound, NodeNotRunning, NodeStartFailed
from .models import API_FILE, JSON, ApiInfo

__all__ = [
    "NodeProcess",
    "find_binary",
    "missing_binaries",
    "repo_root",
    "wait_for_api",
]

#: Environment variable naming the directory of the AgentMesh binaries.
BIN_DIR_ENV = "AGENTMESH_BIN_DIR"
_PR_SET_PDEATHSIG = 1


def repo_root() -> Path | None:
    """The AgentMesh source tree this package sits in, if any (a directory
    with ``Cargo.toml`` and ``sdk/python``), looked up from this file and
    from the working directory."""
    starts = [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for d in (start, *start.parents):
            if (d / "Cargo.toml").is_file() and (d / "sdk" / "python").is_dir():
                return d
    return None


def _candidates(name: str) -> list[Path]:
    out: list[Path] = []
    env = os.environ.get(BIN_DIR_ENV)
    if env:
        out.append(Path(env).expanduser() / name)
    sim = shutil.which("agentmesh-sim")
    if sim:
        out.append(Path(sim).resolve().parent / name)
    root = repo_root()
    if root is not None:
        out.append(root / "target" / "debug" / name)
    return out


def find_binary(name: str) -> Path:
    """The path of AgentMesh binary ``name`` (``agentmesh`` or
    ``agentmesh-sim``): in ``$AGENTMESH_BIN_DIR``, else next to
    ``agentmesh-sim`` on the ``PATH``, else in the source tree's
    ``target/debug``. Raises :class:`BinaryNotFound`."""
    tried = _candidates(name)
    for p in tried:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    where = ", ".join(str(p) for p in tried) or "nowhere (no PATH entry, no source tree)"
    raise BinaryNotFound(
        f"cannot find the {name} binary (looked in {where}); build it with "
        f"`cargo build --bins` or set {BIN_DIR_ENV} to the directory holding it"
    )


def missing_binaries(names: Sequence[str] = ("agentmesh-sim", "agentmesh")) -> str | None:
    """Why the binaries cannot be used, or ``None`` when all are there."""
    for n in names:
        try:
            find_binary(n)
        except BinaryNotFound as e:
            return e.message
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child: ask the kernel for SIGTERM when the parent exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


_live: weakref.WeakSet[NodeProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    procs = [p for p in list(_live) if p.stop_at_exit]
    for p in procs:
        with contextlib.suppress(Exception):
            p.signal_stop()
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate(timeout=5)


class NodeProcess:
    """A node process that prints one JSON object per line.

    Its stdout is read on a thread (from the pipe, or by following a log
    file), so it never blocks on a full pipe; :meth:`wait_for` waits for a
    line that matches.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        stdout_file: Path | None = None,
        stderr_file: Path | None = None,
        detach: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.data_dir = data_dir
        self.stop_at_exit = not detach
        self._lines: list[JSON] = []
        self._cond = threading.Condition()
        self._eof = False
        data_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_file = stderr_file or data_dir / "stderr.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        # The child dies with us unless it is detached, when we start it
        # from the main thread: the kernel ties PDEATHSIG to the thread that
        # forked, and the main thread lives as long as the interpreter.
        tie = not detach and sys.platform == "linux"
        tie = tie and threading.current_thread() is threading.main_thread()
        self._out_handle: IO[bytes] | None = None
        err = open(self.stderr_file, "ab")
        try:
            if stdout_file is not None:
                self._out_handle = open(stdout_file, "wb")
                stdout: int | IO[bytes] = self._out_handle
            else:
                stdout = subprocess.PIPE
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
                env=full_env,
                cwd=str(data_dir),
                preexec_fn=_die_with_parent if tie else None,
                start_new_session=detach,
            )
        finally:
            err.close()
        if stdout_file is not None:
            source: IO[bytes] = open(stdout_file, "rb")
            follow = True
        else:
            assert self.proc.stdout is not None
            source = self.proc.stdout
            follow = False
        self._reader = threading.Thread(
            target=self._read, args=(source, follow), name=f"agentmesh-{name}-stdout", daemon=True
        )
        self._reader.start()
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read(self, source: IO[bytes], follow: bool) -> None:
        buf = b""
        try:
            while True:
                chunk = source.readline()
                if not chunk:
                    if follow and self.proc.poll() is None:
                        time.sleep(0.05)
                        continue
                    if follow:
                        # The process is gone: read what it wrote last.
                        rest = source.read()
                        if rest:
                            buf += rest
                            for part in buf.split(b"\n"):
                                self._add(part)
                            buf = b""
                    break
                buf += chunk
                if not buf.endswith(b"\n"):
                    continue  # a partial line of a followed file
                self._add(buf)
                buf = b""
            if buf:
                self._add(buf)
        finally:
            source.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _add(self, raw: bytes) -> None:
        line = raw.strip()
        if not line:
            return
        try:
            v = json.loads(line)
        except ValueError:
            v = {"event": None, "text": line.decode("utf-8", "replace")}
        if not isinstance(v, dict):
            return
        with self._cond:
            self._lines.append(v)
            self._cond.notify_all()

    def lines(self) -> list[JSON]:
        """Every JSON line read so far."""
        with self._cond:
            return list(self._lines)

    def wait_for(self, pred: Callable[[JSON], bool], timeout: float, what: str = "a line") -> JSON:
        """The first line (read so far or from now on) that satisfies
        ``pred``; raises :class:`NodeStartFailed` when the process exits
        first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for v in self._lines[seen:]:
                    if pred(v):
                        return v
                seen = len(self._lines)
                if self._eof:
                    raise NodeStartFailed(
                        f"{self.name} exited (status {self.proc.poll()}) before {what}"
                        f"{self.stderr_tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeStartFailed(
                        f"{self.name}: no {what} after {timeout:.0f} s{self.stderr_tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def wait_event(self, event: str, timeout: float, **match: Any) -> JSON:
        """The first line ``{"event": event, **match}``."""

        def pred(v: JSON) -> bool:
            return v.get("event") == event and all(v.get(k) == m for k, m in match.items())

        return self.wait_for(pred, timeout, f"event {event!r}")

    def stderr_tail(self, n: int = 15) -> str:
        """The last ``n`` lines of the process's stderr, for error messages."""
        try:
            text = self.stderr_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = text.strip().splitlines()[-n:]
        return ("\n--- stderr of " + self.name + " ---\n" + "\n".join(tail)) if tail else ""

    def signal_stop(self) -> None:
        """Sends SIGTERM without waiting (see :meth:`terminate`)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._finish()
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no chance to clean anything up."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._finish()

    def _finish(self) -> None:
        self._reader.join(timeout=2)
        if self._out_handle is not None:
            self._out_handle.close()
        _live.discard(self)

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<NodeProcess {self.name} pid={self.pid} {state}>"


def probe(info: ApiInfo, timeout: float = 5.0) -> bool:
    """Whether the API ``info`` describes answers ``GET /v1/status`` with
    its token."""
    from .client import Client

    try:
        with Client.from_info(info, timeout=timeout) as c:
            c.status()
    except (AgentMeshError, httpx.HTTPError, OSError):
        return False
    return True


def wait_for_api(
    data_dir: Path, timeout: float, proc: NodeProcess | None = None, stale: ApiInfo | None = None
) -> ApiInfo:
    """Waits until ``data_dir/api.json`` exists (and is not ``stale``) and
    its API answers; raises :class:`NodeStartFailed` when ``proc`` exits
    first or the time is up (:class:`NodeNotRunning` without ``proc``)."""
    deadline = time.monotonic() + timeout
    last: AgentMeshError | None = None
    while True:
        if proc is not None and not proc.alive:
            raise NodeStartFailed(
                f"{proc.name} exited (status {proc.returncode}) before writing "
                f"{data_dir / API_FILE}{proc.stderr_tail()}"
            )
        try:
            info = ApiInfo.load(data_dir)
            if stale is None or info.token != stale.token:
                if probe(info):
                    return info
                last = NodeNotRunning(f"the API of {data_dir} does not answer yet")
        except (NodeNotRunning, BadResponse) as e:
            last = e
        if time.monotonic() >= deadline:
            msg = f"no working {API_FILE} in {data_dir} after {timeout:.0f} s ({last})"
            if proc is not None:
                raise NodeStartFailed(msg + proc.stderr_tail())
            raise NodeNotRunning(msg)
        time.sleep(0.1)
