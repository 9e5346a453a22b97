"""validate_config on every shipped config, on broken copies (the error names the key), and the
real-model configs' guard against an unset checkpoint."""

import glob
import os

import pytest

from jdiff.train import rl_loop, setup
from jdiff.train.validate import validate_config

from config_utils import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
REAL = [n for n in NAMES if load_config(n).model.get("require_checkpoint")]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_config_validates(name):
  validate_config(load_config(name))


def test_the_papers_configs_ship():
  assert {
      "tracerl_trado4b_math",
      "tracerl_trado8b_math",
      "d1_llada8b_gsm8k",
      "d1_sft_llada8b_s1k",
      "cj_grpo_llada8b_countdown",
      "dtrpo",
      "dtrpo_sdar8b",
  } <= set(NAMES)
  assert set(REAL) >= {
      "tracerl_trado4b_math",
      "d1_llada8b_gsm8k",
      "cj_grpo_llada8b_countdown",
      "dtrpo_sdar8b",
  }


def test_dtrpo_sdar8b_steps_on_the_decoding_grid():
  """The estimator's grid is the sampler's: block 4 in 4 steps, the paper's estimator."""
  from jdiff.models.config import PRESETS

  c = load_config("dtrpo_sdar8b")
  assert PRESETS[c.model.preset]().block_size == 4 == c.sampler.steps_per_block
  assert c.method.steps_per_block == c.sampler.steps_per_block
  assert c.method.estimator == "newly_unmasked" and c.method.timesteps_per_block == 1


@pytest.mark.parametrize("name", REAL)
def test_real_config_shape(name):
  c = load_config(name)
  assert c.model.checkpoint == "" and c.model.param_dtype == "bfloat16"
  assert c.model.remat != "none"
  assert tuple(c.mesh.shape) == (1, -1, 1)
  assert c.task.get("train_path")


@pytest.mark.parametrize("name", REAL)
def test_real_config_without_checkpoint_fails_at_load(name):
  c = load_config(name)
  with pytest.raises(ValueError, match=r"config\.model\.checkpoint is empty.*does not fall back"):
    setup.load_policy(c.model, c.seed)


def test_real_rl_run_fails_before_loading_anything(tmp_path):
  c = load_config("tracerl_trado4b_math")
  with pytest.raises(ValueError, match=r"config\.model\.checkpoint is empty"):
    rl_loop.run(c, str(tmp_path))


def _set(c, path, value):
  *parents, leaf = path.split(".")
  for p in parents:
    c = c[p]
  c[leaf] = value


# (config, dotted key to break, bad value, the key the error must name)
BROKEN = [
    ("tracerl", "rl.grad_accum", 3, "config.rl.grad_accum"),
    ("tracerl", "rl.group_size", 1, "config.rl.group_size"),
    ("tracerl", "rl.rows_per_update", -1, "config.rl.rows_per_update"),
    ("tracerl_trado4b_math", "rl.rows_per_update", 63, "config.rl.rows_per_update"),
    ("cj_grpo", "rl.rows_per_update", 8, "config.rl.rows_per_update"),
    ("tracerl", "sampler.steps_per_block", 8, "config.sampler"),
    ("tracerl", "sampler.typo", 1, "config.sampler"),
    ("tracerl", "eval.sampler.strategy", "nope", "config.eval.sampler"),
    ("tracerl", "model.preset", "gpt5", "config.model.preset"),
    ("tracerl", "model.remat", "sometimes", "config.model.remat"),
    ("tracerl", "task.name", "chess", "config.task.name"),
    ("tracerl", "task.reward", "vibes", "config.task.reward"),
    ("tracerl", "method.shrnk", 2, "config.method"),
    ("tracerl", "method.eps", 1.5, "config.method"),
    ("tracerl", "optim.lr_typo", 1.0, "config.optim.lr_typo"),
    ("tracerl", "optim.schedule", "wavy", "config.optim"),
    ("tracerl", "sft.objective", "sft_magic", "config.sft.objective"),
    ("tracerl", "sft.options", {"bogus": 1}, "config.sft.options.bogus"),
    ("tracerl", "sft.grad_accum", 5, "config.sft.grad_accum"),
    ("tracerl", "mesh", {"shape": (-1, -1, 1)}, "config.mesh.shape"),
    ("tracerl", "mesh", {"shape": (2, 2)}, "config.mesh.shape"),
    (
        "tracerl",
        "mesh",
        {"shape": (1, -1, 1), "sampling_layout": "x"},
        "config.mesh.sampling_layout",
    ),
    ("tracerl", "checkpoint.every", 0, "config.checkpoint.every"),
    ("tracerl", "learning_rate", 1.0, "config.learning_rate"),
    ("tracerl", "data.max_prompt_len", 0, "config.data.max_prompt_len"),
    ("diffu_grpo", "sampler.block_length", 7, "config.sampler"),
    ("diffu_grpo", "value.enabled", True, "config.value.enabled"),
    ("cj_grpo", "sampler.record_states", False, "config.sampler.record_states"),
    ("cj_grpo", "sampler.steps", 6, "config.sampler"),
    ("cj_grpo_llada8b_countdown", "rl.grad_accum", 7, "config.method.grad_accum"),
    ("cj_grpo_llada8b_countdown", "method.grad_accum", 21, "config.method.grad_accum"),
    ("tracerl_trado4b_math", "task.train_path", "", "config.task.train_path"),
    ("tracerl_trado4b_math", "sampler.block_length", 8, "config.sampler"),
    ("d1_llada8b_gsm8k", "sampler.name", "block", "config.sampler"),
    ("dtrpo", "offline.pairs_per_step", 15, "config.offline.pairs_per_step"),
    ("dtrpo", "offline.group_sz", 4, "config.offline"),
    ("dtrpo", "method.beta", 0.0, "config.method"),
    ("dtrpo", "method.steps_per_block", -1, "config.method"),
    ("dtrpo", "method.estimator", "exact", "config.method"),
    ("dtrpo_sdar8b", "method.timesteps_per_block", 0, "config.method"),
]


@pytest.mark.parametrize("name,key,value,named", BROKEN, ids=[f"{n}:{k}" for n, k, _, _ in BROKEN])
def test_broken_copy_names_the_key(name, key, value, named):
  c = load_config(name)
  if name == "dtrpo" and key == "offline.pairs_per_step":
    c.offline.grad_accum = 2
  _set(c, key, value)
  with pytest.raises(ValueError) as e:
    validate_config(c)
  assert str(e.value).startswith(named), str(e.value)


def test_offline_config_with_online_sections_fails():
  c = load_config("dtrpo")
  c.rl = load_config("tracerl").rl
  with pytest.raises(ValueError, match=r"^config\.rl"):
    validate_config(c)
