#!/usr/bin/env python
"""RL training: python scripts/train.py --config configs/NAME.py [--config.a.b=v ...] [--workdir DIR]

Multi-host: every host runs the same command; pass --coordinator/--num_processes/
--process_id off TPU (on TPU VMs `jax.distributed.initialize()` needs no arguments).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<config name>)")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process)")


def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
  import jax

  if _COORD.value or _NPROC.value:
    # CPU processes (tests, debugging) need a cross-process collectives backend; set before
    # the backends start. Accelerator collectives are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
  elif os.environ.get("TPU_NAME") or os.environ.get("TPU_WORKER_HOSTNAMES"):
    jax.distributed.initialize()
  config = _CONFIG.value
  from jdiff.rl.method import methods

  if methods.get(config.method.name).offline:  # dTRPO: a fixed pair set, no rollouts
    from jdiff.train.offline_loop import run
  else:
    from jdiff.train.rl_loop import run
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", name)
  run(config, workdir)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
