"""In-sandbox bootstrap; run as ``python -I -S -c <this file's source> WORKDIR LIMITS_JSON``.

Order matters: (1) read the nonce from stdin, (2) set rlimits (soft = hard,
so the program cannot raise them), (3) compute the allowed path roots,
(4) install the audit hook, (5) exec ``solution.py`` then ``test.py`` in one
fresh module namespace named ``solution``, (6) print the nonce and
``os._exit(0)`` only if nothing raised.  See ``sandbox.py`` for the policy.

Only the standard library may be used here, and nothing is imported after
the hook is installed except what the program itself imports.
"""

import os
import sys

# Events refused outright.
DENIED_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "subprocess.Popen",
        "pty.spawn",
        "os.startfile",
        "resource.setrlimit",
        "resource.prlimit",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    }
)
DENIED_PREFIXES = ("socket.", "ctypes.", "_xxsubinterpreters.", "cpython.run_")
# Top-level modules that give network, process creation or native memory access.
BLOCKED_MODULES = frozenset(
    {
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "ctypes",
        "_ctypes",
        "subprocess",
        "_posixsubprocess",
        "multiprocessing",
        "_multiprocessing",
        "pty",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_testcapi",
        "_testinternalcapi",
        "_testmultiphase",
        "_testbuffer",
        "_testimportmultiple",
    }
)
# Path-taking events that modify the filesystem: indices of their path args.
WRITE_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "shutil.rmtree": (0,),
    "shutil.chown": (0,),
    "shutil.copyfile": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "shutil.make_archive": (0,),
    "shutil.unpack_archive": (1,),
}
READ_EVENTS = {"os.listdir": (0,), "os.scandir": (0,)}
EXTRA_READ_ROOTS = (
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/usr/share/zoneinfo",
    "/etc/localtime",
)


def set_limits(limits):
  import resource

  wanted = [
      (resource.RLIMIT_CPU, int(limits["cpu_s"])),
      (resource.RLIMIT_AS, int(limits["memory_bytes"])),
      (resource.RLIMIT_FSIZE, int(limits["file_size_bytes"])),
      (resource.RLIMIT_NOFILE, int(limits["max_open_files"])),
      (resource.RLIMIT_NPROC, int(limits["max_processes"])),
      (resource.RLIMIT_CORE, 0),
  ]
  for res, value in wanted:
    _, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
      value = min(value, hard)
    resource.setrlimit(res, (value, value))


def make_hook(workdir, read_roots):
  realpath, fsdecode, fspath, sep = os.path.realpath, os.fsdecode, os.fspath, os.sep
  write_roots = (workdir, "/dev/null")
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

  def inside(path, roots):
    if isinstance(path, int):  # an already-open descriptor
      return True
    p = realpath(fsdecode(fspath(path)))
    return any(p == r or p.startswith(r + sep) for r in roots)

  def check(event, args, indices, roots):
    for i in indices:
      if i < len(args) and args[i] is not None and not inside(args[i], roots):
        raise PermissionError(f"sandbox: {event} on {args[i]!r} is outside the allowed paths")

  def hook(event, args):
    if event in DENIED_EVENTS or event.startswith(DENIED_PREFIXES):
      raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import":
      name = args[0] or ""
      if name in BLOCKED_MODULES or name.partition(".")[0] in BLOCKED_MODULES:
        raise ImportError(f"sandbox: import of {name!r} is not allowed")
    elif event == "open":
      path, mode, flags = args
      writing = bool((mode and any(c in mode for c in "wax+")) or (flags or 0) & write_flags)
      if path is not None:
        check(event, args, (0,), write_roots if writing else read_roots)
    elif event in WRITE_EVENTS:
      check(event, args, WRITE_EVENTS[event], write_roots)
    elif event in READ_EVENTS:
      check(event, args, READ_EVENTS[event], read_roots)

  return hook


def main():
  import json

  workdir = os.path.realpath(sys.argv[1])
  limits = json.loads(sys.argv[2])
  nonce = sys.stdin.buffer.readline().strip()
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)  # input() sees EOF instead of our pipe
  set_limits(limits)

  # Programs use tempfile/HOME; point both at the workdir (not secrets).
  os.environ["TMPDIR"] = os.environ["HOME"] = workdir
  sources = []
  for name in ("solution.py", "test.py"):
    with open(os.path.join(workdir, name), encoding="utf-8") as f:
      sources.append((os.path.join(workdir, name), f.read()))

  roots = {workdir, *EXTRA_READ_ROOTS}
  for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path):
    if p:
      roots.add(os.path.realpath(p))
  import traceback
  import types

  module = types.ModuleType("solution")
  sys.modules["solution"] = module
  sys.addaudithook(make_hook(workdir, tuple(sorted(roots))))
  # From here on every operation of the program goes through the hook.
  try:
    for filename, source in sources:
      exec(compile(source, filename, "exec"), module.__dict__)
  except BaseException:  # incl. SystemExit: exiting early is not passing
    try:
      traceback.print_exc()
      sys.stderr.flush()
    finally:
      os._exit(1)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:
      pass
  os.write(1, b"\n" + nonce + b"\n")
  os._exit(0)  # do not wait for threads the program may have left running


if __name__ == "__main__":
  main()
