"""Faults at the level of the whole RL loop: a NaN loss mid-run, and a kill -9 mid-checkpoint."""

import os
import subprocess
import sys

import jax
import numpy as np

from config_utils import ROOT, load_config, metrics_rows, policy_leaves, tiny
from jdiff.train import rl_loop
from jdiff.train import runtime as runtime_lib
from jdiff.train.checkpointing import Checkpointer

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # where orbax writes a step before it commits it


def test_nan_loss_skips_the_step_keeps_state_and_reports(tmp_path, monkeypatch, capsys):
  """The first policy update sees NaN advantages: its loss is NaN, so params and optimizer
  state must come back unchanged, the step's metrics must say so, and the run goes on."""
  real = runtime_lib.make_update_step
  calls = []  # (state in, state out, metrics) of every policy update, on the host

  def poisoned_factory(*args, **kwargs):
    update = real(*args, **kwargs)

    def call(state, batch):
      if not calls:
        batch = dict(batch)
        batch["advantages"] = np.full(np.shape(batch["advantages"]), np.nan, np.float32)
      before = jax.device_get((state.params, state.opt_state))  # state is donated below
      new_state, metrics = update(state, batch)
      calls.append(
          (before, jax.device_get((new_state.params, new_state.opt_state)), jax.device_get(metrics))
      )
      return new_state, metrics

    return call

  monkeypatch.setattr(runtime_lib, "make_update_step", poisoned_factory)
  workdir = str(tmp_path / "nan")
  rl_loop.run(tiny(load_config()), workdir)

  assert len(calls) == 2  # tiny(): 2 RL steps of 1 update each
  (in1, out1, m1), (in2, out2, m2) = calls
  assert not np.isfinite(m1["loss"]) and m1["skipped"] == 1.0
  assert np.isfinite(m2["loss"]) and m2["skipped"] == 0.0
  leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]
  for a, b, c in zip(leaves(in1), leaves(out1), leaves(in2)):
    np.testing.assert_array_equal(a, b)  # the skipped update changed nothing ...
    np.testing.assert_array_equal(a, c)  # ... and the loop handed that state to step 2
  # Step 2's update was applied (Adam's count moves even where this toy batch's gradient is 0).
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(in2[1]), leaves(out2[1])))
  rows = metrics_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[0]["skipped"] == 1.0 and rows[1]["skipped"] == 0.0
  assert "step 1: non-finite loss" in capsys.readouterr().out


# The child trains 2 steps and SIGKILLs itself while step 2's checkpoint is being written:
# a watcher thread fires as soon as step 2's tmp dir appears (orbax writes every file there
# and renames it to "2" last), so the kill lands between the first byte and the commit.
_CHILD = r"""
import os, signal, sys, threading, time
sys.path[:0] = [sys.argv[2], os.path.join(sys.argv[2], "tests")]
from config_utils import load_config, tiny
from jdiff.train import rl_loop
from jdiff.train import runtime as runtime_lib
from jdiff.train.checkpointing import Checkpointer

workdir = sys.argv[1]
tmp = os.path.join(workdir, "checkpoints", "2.orbax-checkpoint-tmp")
real_save = Checkpointer.save

def watch():
  while not os.path.exists(tmp):
    time.sleep(0.0002)
  os.kill(os.getpid(), signal.SIGKILL)

def save(self, step, items, meta=None, force=False):
  if step == 2:
    threading.Thread(target=watch, daemon=True).start()
  return real_save(self, step, items, meta, force)

Checkpointer.save = save
rl_loop.run(tiny(load_config()), workdir)
"""


def test_kill_9_mid_checkpoint_then_resume(straight, tmp_path):
  env = dict(os.environ)  # conftest's XLA flags: the same numerics as the straight run
  for attempt in range(3):  # a save that outruns the watcher is not a crash: try again
    workdir = tmp_path / f"killed{attempt}"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(workdir), ROOT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == -9:
      break
  assert proc.returncode == -9, f"the kill never landed mid-save:\n{proc.stderr[-3000:]}"
  ckdir = workdir / "checkpoints"
  assert (ckdir / ("2" + TMP_SUFFIX)).exists() and not (ckdir / "2").exists()
  assert Checkpointer(str(workdir), read_only=True).latest_step() == 1
  # The step-1 checkpoint is intact, and the resumed run ends exactly where the straight
  # run does; the killed run's metrics row for step 2 is replaced, not duplicated.
  for a, b in zip(policy_leaves(straight[0], 1), policy_leaves(str(workdir), 1)):
    np.testing.assert_array_equal(a, b)
  rl_loop.run(tiny(load_config()), str(workdir))
  assert Checkpointer(str(workdir), read_only=True).steps() == [1, 2]
  assert not (ckdir / ("2" + TMP_SUFFIX)).exists()
  for a, b in zip(policy_leaves(straight[0], 2), policy_leaves(str(workdir), 2)):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in metrics_rows(str(workdir))] == [1, 2]
