"""Every shipped config loads and validates: model preset, task, sampler, method, optimizer."""

import glob
import os
import sys

import pytest

from jdiff.config_loading import load_sibling
from jdiff.models.config import PRESETS
from jdiff.rl.method import methods
from jdiff.tasks import TASKS
from jdiff.train import config as config_lib
from jdiff.train import setup
from jdiff.train.optim import make_optimizer

from config_utils import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
  return load_config(os.path.basename(path)[:-3])


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_loads_and_validates(path):
  c = _load(path)
  assert c.model.get("checkpoint") or c.model.preset in PRESETS
  assert c.task.name in TASKS
  family = "sdar"
  if not c.model.get("checkpoint"):
    family = PRESETS[c.model.preset]().family
  if "sampler" in c:
    setup.sampler_config(c.sampler, family)
  if "eval" in c and "sampler" in c.eval:
    setup.sampler_config(c.eval.sampler, family)
  if "method" in c:
    method = methods.get(c.method.name)
    config_lib.section_to(method.config_cls, c.method, "config.method", skip=("name",))
  if "optim" in c:
    make_optimizer(dict(c.optim))
  if "sft" in c:
    make_optimizer(dict(c.sft.optim))


def test_at_least_the_documented_configs_ship():
  names = {os.path.basename(p)[:-3] for p in CONFIGS}
  assert {"tracerl", "sft_block", "sft_llada", "sft_semi_ar"} <= names


def test_configs_build_on_siblings_without_sys_path_edits():
  before = list(sys.path)
  c = _load(os.path.join(ROOT, "configs", "sft_llada.py"))  # sft_llada <- sft_block <- tracerl
  assert sys.path == before
  assert c.model.preset != load_config("sft_block").model.preset
  for path in CONFIGS:
    with open(path) as f:
      assert "sys.path" not in f.read(), path


def test_load_sibling_names_a_missing_file():
  with pytest.raises(ValueError, match="nope.py"):
    load_sibling(os.path.join(ROOT, "configs", "tracerl.py"), "nope")
