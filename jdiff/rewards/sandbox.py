"""Best-effort sandbox for running model-written Python (used by the ``code`` reward).

TraceRL and d1 run generated code with ``exec`` in a child process and no real
sandbox.  jdiff adds layers, each cheap and each documented as what it is:

Enforced by the OS (cannot be undone by the program):
  * fresh temporary working directory (``cwd``), deleted afterwards;
  * isolated interpreter ``sys.executable -I -S`` (no site-packages, no
    ``PYTHON*`` variables, cwd not on ``sys.path``);
  * an environment containing only ``PATH`` (no secrets from the parent);
  * own session / process group; the whole group is SIGKILLed on wall-clock
    timeout *and* after normal exit (stray children cannot outlive a run);
  * rlimits set by the bootstrap before any untrusted code, soft = hard so
    they cannot be raised again: CPU seconds, address space, file size
    (also caps captured output), open files, core dumps off, processes
    (``RLIMIT_NPROC``; note the kernel exempts real root from it);
  * when available (probed once): a private network namespace via util-linux
    ``unshare`` (no interfaces -> no network), a user namespace (loses
    capabilities outside it), and, when the parent is root and the
    interpreter is readable by ``nobody``, dropping to uid/gid ``nobody``.

Enforced in-process by a PEP 578 audit hook (best effort: hooks cannot be
removed from Python, but native-code tricks could bypass them; ctypes and
other native escape hatches are blocked for that reason):
  * no ``fork``/``exec``/``spawn``/``system``/``subprocess``/``pty``;
  * no ``kill``/``killpg``; no ``setrlimit``;
  * no ``socket``/``ssl``/``ctypes``/``multiprocessing``/sub-interpreter
    imports, no ``gc.get_objects``-style heap walking;
  * file writes (``open``, ``os.open``, remove/rename/link/chmod/...) only
    inside the working directory (paths resolved with ``realpath``);
  * file reads only inside the working directory and the interpreter's own
    installation (so ``/proc/<ppid>/environ``, ``/etc``, ``~`` are refused).

NOT enforced: total disk usage (many files, each under the size limit),
time-of-check/time-of-use races on symlinks, introspection attacks through
Python frames, and kernel-level escapes.  Run untrusted workloads inside a
container/VM as well.

Pass/fail: the bootstrap writes a random nonce (sent over stdin, never in
argv/env) to stdout only after the program finished without an exception, so
``os._exit(0)``/``sys.exit(0)`` before the asserts does not count as passing.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from jdiff.rewards import _sandbox_bootstrap

# The bootstrap is a normal module (lintable, importable) whose *source* is
# passed to the child with ``-c`` (no file needs to be readable by the child).
BOOTSTRAP_SOURCE = Path(_sandbox_bootstrap.__file__).read_text(encoding="utf-8")

MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxLimits:
  """Resource limits for one sandboxed run."""

  timeout_s: float = 5.0  # wall clock, whole process group killed after it
  cpu_s: int = 5  # RLIMIT_CPU (SIGXCPU/SIGKILL)
  memory_bytes: int = 1 << 30  # RLIMIT_AS, 1 GiB
  file_size_bytes: int = 16 << 20  # RLIMIT_FSIZE, also bounds stdout/stderr
  max_processes: int = 64  # RLIMIT_NPROC (per uid; not applied to real root)
  max_open_files: int = 256  # RLIMIT_NOFILE
  max_output_bytes: int = 64 << 10  # how much stdout/stderr we read back


@dataclass
class SandboxResult:
  passed: bool  # program (and tests) ran to completion without an exception
  returncode: Optional[int]
  timed_out: bool
  stdout: str
  stderr: str


@dataclass(frozen=True)
class _Launcher:
  name: str
  prefix: Tuple[str, ...]  # command prefix, e.g. ("unshare", "--net", "--")
  popen_kwargs: tuple  # tuple of (key, value) for subprocess.Popen
  owner: Optional[Tuple[int, int]]  # chown the workdir to this uid/gid


def _candidate_launchers() -> List[_Launcher]:
  out = []
  nobody = None
  if os.geteuid() == 0:
    try:
      pw = pwd.getpwnam("nobody")
      nobody = (pw.pw_uid, pw.pw_gid)
    except KeyError:
      pass
  if nobody is not None:
    uid, gid = (str(x) for x in nobody)
    drop = (("extra_groups", []),)
    netns_drop = ("unshare", "--net", "--setgid", gid, "--setuid", uid, "--")
    out.append(_Launcher("netns+nobody", netns_drop, drop, nobody))
  out.append(
      _Launcher("userns+netns", ("unshare", "--user", "--map-root-user", "--net", "--"), (), None)
  )
  if nobody is not None:
    kw = (("user", nobody[0]), ("group", nobody[1]), ("extra_groups", []))
    out.append(_Launcher("nobody", (), kw, nobody))
  out.append(_Launcher("netns", ("unshare", "--net", "--"), (), None))
  out.append(_Launcher("plain", (), (), None))
  return out


_LAUNCHER: Optional[_Launcher] = None
_LAUNCHER_LOCK = threading.Lock()


def sandbox_isolation() -> str:
  """Name of the isolation level in use (probed once; e.g. "userns+netns")."""
  return _launcher().name


def _launcher() -> _Launcher:
  global _LAUNCHER
  with _LAUNCHER_LOCK:
    if _LAUNCHER is None:
      probe = SandboxLimits(timeout_s=30.0, cpu_s=10)
      for cand in _candidate_launchers():
        try:
          if _run(cand, "x = 1", "assert x == 1", probe).passed:
            _LAUNCHER = cand
            break
        except OSError:  # unshare missing, EPERM, ...
          continue
      else:
        _LAUNCHER = _candidate_launchers()[-1]
    return _LAUNCHER


def run_python_sandboxed(
    solution: str, test: str = "", limits: Optional[SandboxLimits] = None
) -> SandboxResult:
  """Run ``solution`` then ``test`` (same namespace) in the sandbox.

  ``passed`` is True iff both finished without raising (e.g. all asserts
  held) within the limits.  The module name is ``"solution"``, so an
  ``if __name__ == "__main__":`` block in the solution does not run.
  """
  return _run(_launcher(), solution, test, limits or SandboxLimits())


def _run(launcher: _Launcher, solution: str, test: str, limits: SandboxLimits) -> SandboxResult:
  root = tempfile.mkdtemp(prefix="jdiff-sbx-")
  try:
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    for name, text in (("solution.py", solution), ("test.py", test)):
      with open(os.path.join(work, name), "w", encoding="utf-8") as f:
        f.write(text)
    if launcher.owner is not None:
      os.chmod(root, 0o711)  # let the dropped uid traverse to its workdir
      for path in (work, *(os.path.join(work, n) for n in os.listdir(work))):
        os.chown(path, *launcher.owner)
    nonce = secrets.token_hex(16)
    with (
        open(os.path.join(root, "stdout"), "wb+") as out,
        open(os.path.join(root, "stderr"), "wb+") as err,
    ):
      cmd = [
          *launcher.prefix,
          sys.executable,
          "-I",
          "-S",
          "-c",
          BOOTSTRAP_SOURCE,
          work,
          json.dumps(asdict(limits)),
      ]
      proc = subprocess.Popen(
          cmd,
          cwd=work,
          env={"PATH": MINIMAL_PATH},
          stdin=subprocess.PIPE,
          stdout=out,
          stderr=err,
          close_fds=True,
          start_new_session=True,
          **dict(launcher.popen_kwargs),
      )
      try:
        try:
          proc.stdin.write(nonce.encode() + b"\n")
          proc.stdin.close()
        except (BrokenPipeError, OSError):
          pass
        exited = _wait_without_reaping(proc.pid, limits.timeout_s)
      finally:
        # The leader is still a zombie (not reaped), so its pgid cannot
        # have been reused: kill everything left in the group.
        _kill_group(proc.pid)
        proc.wait()
      stdout = _read_head(out, limits.max_output_bytes)
      stderr = _read_head(err, limits.max_output_bytes)
      marker = ("\n" + nonce + "\n").encode()
      out.seek(max(0, os.fstat(out.fileno()).st_size - len(marker)))
      ok = exited and proc.returncode == 0 and out.read() == marker
    if ok:
      stdout = stdout.replace("\n" + nonce + "\n", "")
    return SandboxResult(ok, proc.returncode, not exited, stdout, stderr)
  finally:
    _force_rmtree(root)


def _wait_without_reaping(pid: int, timeout: float) -> bool:
  """Wait until ``pid`` exits (stays a zombie); False on timeout."""
  try:
    fd = os.pidfd_open(pid)
  except (AttributeError, OSError):
    fd = None
  if fd is not None:
    try:
      poller = select.poll()  # not select(): no FD_SETSIZE limit
      poller.register(fd, select.POLLIN)
      return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
      os.close(fd)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
      return True
    time.sleep(0.005)
  return False


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _read_head(f, limit: int) -> str:
  f.seek(0)
  return f.read(limit).decode("utf-8", errors="replace")


def _force_rmtree(path: str) -> None:
  """rmtree that survives directories the program made read-only."""

  def _onerror(func, p, exc_info):
    try:
      os.chmod(os.path.dirname(p), stat.S_IRWXU)
      func(p)
    except OSError:
      pass

  shutil.rmtree(path, onerror=_onerror)
  if os.path.exists(path):
    shutil.rmtree(path, ignore_errors=True)
