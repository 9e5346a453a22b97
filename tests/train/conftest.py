"""One shortened embedded-default RL run, shared by the loop tests that compare against it."""

import pytest

from config_utils import load_config, tiny


@pytest.fixture(scope="session")
def straight(tmp_path_factory):
  """``(workdir, results)`` of ``tiny(configs/tracerl.py)`` run straight through (2 steps)."""
  from jdiff.train import rl_loop

  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, rl_loop.run(tiny(load_config()), workdir)
