"""A model server started inside the caption job (caption.server): start, wait until ready, stop.

`running_server(scfg, model, log_path)` is a context manager:

* `command` is split like a shell would (shlex; no shell runs it) and each word formatted with
  {model} and {port}: a free port on 127.0.0.1. Environment settings go in front as
  `env HF_HUB_OFFLINE=1 vllm serve ...`. The server runs in its own process group, stdin closed,
  stdout and stderr appended to `log_path`, and is told to exit if this process dies (Linux
  PR_SET_PDEATHSIG), so a SIGKILLed job leaves no GPU-holding orphan behind.
* Readiness is GET <root><health> answering 200 (vLLM/SGLang answer /health 200 only after warmup;
  an open port or /v1/models is not enough), polled until `startup_timeout`. A server that exits
  first, with ANY exit code (vLLM may exit 0 when its engine dies), fails with its exit code and
  last log lines; so does a server still not ready at the deadline.
* It yields a `Server` (`url`: http://127.0.0.1:PORT/v1; `check()` raises `ServerDied` once the
  process has exited, for the caller's watchdog). On leaving the block, on success or on any
  exception, the process group gets SIGTERM, then SIGKILL after `grace` seconds. SIGTERM sent to the
  job meanwhile (Slurm preemption, scancel) is turned into an exception so that cleanup runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TAIL_LINES = 20


class ServerError(RuntimeError):
    """The in-job server did not start, or stopped: the message names the exit code and its last log lines."""


class ServerDied(ServerError):
    pass


class Terminated(SystemExit):
    """SIGTERM arrived while the server ran (raised in the main thread, so `finally` blocks run)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"  | {t}" for t in tail) if tail else "  | (empty log)"


def server_command(template: str, model: str | None, port: int) -> list[str]:
    """The argument list: the template's words, each formatted with {model} and {port}."""
    words = shlex.split(template)
    if any("{model}" in w for w in words) and not model:
        raise ValueError("caption.server.command uses {model}: set caption.server.model (or caption.model)")
    return [w.format(model=model or "", port=port) for w in words]


def _pdeathsig():
    """A preexec_fn asking the kernel to SIGTERM the child when this process dies (Linux), or None.
    libc is resolved here, before the fork: the child only makes the one call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/v1
    root: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    log_path: Path

    def exited(self) -> int | None:
        return self.proc.poll()

    def check(self) -> None:
        """ServerDied (exit code, last log lines) if the server process has ended."""
        code = self.proc.poll()
        if code is not None:
            raise ServerDied(f"the caption server exited with code {code} while captioning; its last log lines "
                             f"({self.log_path}):\n{log_tail(self.log_path)}")


def get_status(url: str, timeout: float) -> int | None:
    """HTTP status of GET url (no proxies), or None when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_ready(server: Server, health: str, startup_timeout: float) -> float:
    """Poll the health route until 200; seconds it took. ServerError if the process exits or the deadline passes."""
    t0 = time.monotonic()
    deadline, pause = t0 + startup_timeout, 0.05
    while True:
        code = server.proc.poll()
        if code is not None:
            raise ServerError(f"the caption server exited with code {code} before it was ready; its last log "
                              f"lines ({server.log_path}):\n{log_tail(server.log_path)}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerError(f"the caption server was not ready ({server.root}{health} answering 200) within "
                              f"{startup_timeout:g} s; its last log lines ({server.log_path}):\n"
                              f"{log_tail(server.log_path)}")
        if get_status(server.root + health, timeout=min(5.0, max(0.1, left))) == 200:
            return time.monotonic() - t0
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(1.0, pause * 1.5)


def stop(proc: subprocess.Popen, grace: float) -> int | None:
    """SIGTERM to the process group, SIGKILL after `grace` s; the exit code."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the leader's children too, even after the leader exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return proc.returncode


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def running_server(scfg: dict, model: str | None, log_path: Path, grace: float = 15.0,
                   env: dict | None = None) -> Iterator[Server]:
    """Start the server of caption.server `scfg`, wait until ready, yield it, stop it (see the module doc)."""
    port = free_port()
    args = server_command(scfg["command"], model, port)
    health = scfg.get("health") or "/health"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_raises(), open(log_path, "ab") as logf:
        logf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting: {shlex.join(args)}\n".encode())
        logf.flush()
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_pdeathsig(), env=env)
        except OSError as e:
            raise ServerError(f"caption.server.command could not start ({args[0]}): {e}") from None
        root = f"http://127.0.0.1:{port}"
        server = Server(f"{root}/v1", root, proc, log_path)
        try:
            wait_ready(server, health, float(scfg.get("startup_timeout") or 1800))
            yield server
        finally:
            stop(proc, grace)
