"""Run a function under a *hard* wall-clock timeout.

Why a worker process and not ``signal.alarm``: a SIGALRM handler only runs
between Python bytecodes, so it cannot interrupt long C-level work.  Example
found while writing this module: ``math_verify`` on ``10^{10^{8}}`` makes
sympy compute a 100-million-digit integer inside CPython's C bignum code;
an alarm set for 1 s never fires and the call hangs for minutes.  A separate
process can always be killed, so ``mode="process"`` (the default) is the hard
guarantee.  ``mode="signal"`` is kept as a cheap alternative for pure-Python
work; it silently falls back to the process mode off the main thread or when
an interval timer is already armed.

The worker is one long-lived ``python -c`` child per parent process (started
lazily, thread-safe behind a lock, serving one call at a time).  It talks
length-prefixed pickles over its stdin/stdout, so the function must be
picklable by reference (a module-level function).  On a timeout the worker is
SIGKILLed and a fresh one is started by the next call.  Module imports and an
optional ``warmup`` run once per worker *outside* the timeout, so slow imports
(sympy, math_verify: ~1 s) are not mistaken for hangs.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Set, Tuple

# Worker-side loop.  It is run with ``python -c`` (no import of jdiff needed to
# start, and no re-import of the parent's __main__ as multiprocessing's spawn
# mode would do).  fd 1 is redirected to /dev/null so that prints from the
# called code cannot corrupt the protocol stream.
_WORKER_SRC = r"""
import os, sys, pickle, struct, importlib
_in = os.fdopen(os.dup(0), "rb", buffering=0)
_out = os.fdopen(os.dup(1), "wb", buffering=0)
_null = os.open(os.devnull, os.O_RDWR)
os.dup2(_null, 0); os.dup2(_null, 1)
def _read(n):
    buf = b""
    while len(buf) < n:
        chunk = _in.read(n - len(buf))
        if not chunk:
            sys.exit(0)  # parent went away
        buf += chunk
    return buf
def _send(obj):
    try:
        data = pickle.dumps(obj)
    except Exception as exc:
        data = pickle.dumps(("err", "unpicklable result: %r" % (exc,)))
    _out.write(struct.pack(">Q", len(data)) + data)
while True:
    (n,) = struct.unpack(">Q", _read(8))
    kind, payload = pickle.loads(_read(n)) if n else ("exit", None)
    if kind == "exit":
        break
    try:
        if kind == "path":
            sys.path[:] = payload
            result = None
        elif kind == "stub":
            # Register a bare package so importing a submodule does not run
            # the top-level package's heavy __init__ (e.g. jdiff -> jax).
            import types
            name, path = payload
            if name not in sys.modules:
                module = types.ModuleType(name)
                module.__path__ = list(path)
                sys.modules[name] = module
            result = None
        elif kind == "import":
            importlib.import_module(payload)
            result = None
        else:  # "call"
            fn, args, kwargs = payload
            result = fn(*args, **kwargs)
        _send(("ok", result))
    except BaseException as exc:
        _send(("err", "%s: %s" % (type(exc).__name__, exc)))
"""

# Generous limit for worker start-up / imports / warmup; only the call itself
# is subject to the caller's timeout.
_STARTUP_TIMEOUT_S = 300.0


class WorkerError(RuntimeError):
  """The function raised inside the worker (message has type and text)."""


class _Worker:

  def __init__(self) -> None:
    self.proc: Optional[subprocess.Popen] = None
    self.ready: Set[str] = set()  # modules imported / warmups run
    self.lock = threading.Lock()
    self.owner_pid = os.getpid()

  def _kill(self) -> None:
    if self.proc is not None:
      try:
        self.proc.kill()
        self.proc.wait(timeout=5)
      except Exception:
        pass
    self.proc = None
    self.ready = set()

  def _start(self) -> None:
    self.proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER_SRC],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
    )
    self.ready = set()
    # Same import path as the parent (pytest / notebooks tweak sys.path).
    self._roundtrip(("path", list(sys.path)), _STARTUP_TIMEOUT_S)

  def _roundtrip(self, msg, timeout: float):
    assert self.proc is not None and self.proc.stdin is not None
    payload = pickle.dumps(msg)
    data = memoryview(struct.pack(">Q", len(payload)) + payload)
    while data:  # unbuffered pipe: a raw write may be partial
      data = data[self.proc.stdin.write(data) :]
    deadline = time.monotonic() + timeout
    fd = self.proc.stdout.fileno()
    (n,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
    status, value = pickle.loads(_read_exact(fd, n, deadline))
    if status == "err":
      raise WorkerError(value)
    return value

  def call(self, fn, args, kwargs, timeout: float, warmup):
    if self.owner_pid != os.getpid():
      # We are a forked copy: the pipes belong to the parent's worker.
      self.__init__()
    with self.lock:
      try:
        if self.proc is None or self.proc.poll() is not None:
          self._kill()
          self._start()
        for key, msg in (
            *_stub_messages(fn),
            (fn.__module__, ("import", fn.__module__)),
            (_qualname(warmup), ("call", (warmup, (), {}))),
        ):
          if key and key not in self.ready:
            self._roundtrip(msg, _STARTUP_TIMEOUT_S)
            self.ready.add(key)
        return self._roundtrip(("call", (fn, args, kwargs)), timeout)
      except WorkerError:
        raise  # the worker itself is healthy
      except BaseException:
        # Timeout, broken pipe, unpicklable input, KeyboardInterrupt:
        # the worker's state is unknown, so kill it.
        self._kill()
        raise

  def close(self) -> None:
    with self.lock:
      self._kill()


def _stub_messages(fn) -> List[Tuple[str, tuple]]:
  """Stub out the top-level package of ``fn``'s module in the worker.

  The worker then imports e.g. ``jdiff.rewards.math`` without executing
  ``jdiff/__init__.py`` (which imports JAX): faster, less memory, and no
  chance of a second process touching the accelerator.
  """
  top = fn.__module__.partition(".")[0]
  package = sys.modules.get(top)
  if top == fn.__module__ or package is None or not hasattr(package, "__path__"):
    return []
  return [(f"stub:{top}", ("stub", (top, list(package.__path__))))]


def _qualname(fn) -> Optional[str]:
  return None if fn is None else f"warmup:{fn.__module__}.{fn.__qualname__}"


def _read_exact(fd: int, n: int, deadline: float) -> bytes:
  buf = b""
  while len(buf) < n:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      raise TimeoutError("worker did not answer in time")
    # poll, not select: select() fails for fd numbers >= 1024, which a
    # big training process can easily reach.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(max(1, int(remaining * 1000))):
      continue
    chunk = os.read(fd, n - len(buf))
    if not chunk:
      raise EOFError("timeout worker exited unexpectedly")
    buf += chunk
  return buf


_WORKER = _Worker()
atexit.register(_WORKER.close)


class _AlarmTimeout(BaseException):
  """BaseException so that broad ``except Exception`` in callee code cannot swallow it."""


def _call_with_signal(fn, args, kwargs, timeout: float):
  def _on_alarm(signum, frame):
    raise _AlarmTimeout()

  previous = signal.signal(signal.SIGALRM, _on_alarm)
  try:
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
      return fn(*args, **kwargs)
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
  except _AlarmTimeout:
    raise TimeoutError(f"call exceeded {timeout} s") from None
  finally:
    signal.signal(signal.SIGALRM, previous)


def _signal_usable() -> bool:
  return (
      hasattr(signal, "SIGALRM")
      and threading.current_thread() is threading.main_thread()
      and signal.getitimer(signal.ITIMER_REAL)[0] == 0  # don't clobber someone's timer
  )


def call_with_timeout(
    fn: Callable,
    args: tuple = (),
    kwargs: Optional[dict] = None,
    *,
    timeout: float,
    mode: str = "process",
    warmup: Optional[Callable[[], object]] = None,
):
  """Call ``fn(*args, **kwargs)``; raise ``TimeoutError`` after ``timeout`` s.

  ``mode="process"`` (default): run in the shared worker process; hard limit
  (the worker is killed).  ``fn``/``warmup``/args/result must be picklable.
  ``mode="signal"``: run in this process under ``SIGALRM`` when on the main
  thread; best effort only (cannot interrupt C code), else falls back to
  the process mode.  Exceptions raised by ``fn`` propagate (as
  :class:`WorkerError` in process mode).
  """
  kwargs = kwargs or {}
  if timeout <= 0:
    raise ValueError("timeout must be > 0")
  if mode == "signal" and _signal_usable():
    return _call_with_signal(fn, args, kwargs, timeout)
  if mode not in ("process", "signal"):
    raise ValueError(f"unknown timeout mode {mode!r}")
  return _WORKER.call(fn, args, kwargs, timeout, warmup)


def shutdown_worker() -> None:
  """Kill the shared worker process (it restarts lazily on the next call)."""
  _WORKER.close()
