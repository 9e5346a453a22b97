"""RunConfig.from_config: the typed sections, and the checks that moved to methods / samplers."""

import dataclasses

import pytest

from config_utils import load_config
from jdiff.rl import advantages as adv_lib
from jdiff.rl.method import methods
from jdiff.train.config import RLConfig, RunConfig, ValueSection, schema


def test_typed_sections():
  c = load_config("tracerl")
  rc = RunConfig.from_config(c)
  assert rc.kind == "rl" and rc.family == "sdar" and rc.method is methods.get("tracerl")
  assert rc.rl == RLConfig(**dict(c.rl))  # every key of the section, typed
  assert rc.rl.advantage == "group_zscore"
  assert rc.sampler[0] == "block" and rc.sampler[1].block_length == 4  # filled by validate
  # 24 tokens touch at most 7 blocks of 4 (a prompt may end inside one), 4 steps per block.
  assert rc.sampler[1].total_steps == 7 * 4
  assert rc.value == ValueSection(enabled=False, optim=dict(c.value.optim))
  assert rc.value_cfg is None and rc.offline is None
  with pytest.raises(dataclasses.FrozenInstanceError):
    rc.rl.steps = 3


def test_value_and_offline_sections():
  rc = RunConfig.from_config(load_config("tracerl_value"))
  assert rc.value.enabled and rc.value_cfg.gamma == 1.0
  rc = RunConfig.from_config(load_config("dtrpo"))
  assert rc.rl is None and rc.offline.pairs_per_step == 16 and rc.method.offline


def test_sft_kind_stops_before_the_rl_sections():
  c = load_config("tracerl")
  del c["method"]
  rc = RunConfig.from_config(c, "sft")
  assert rc.kind == "sft" and rc.method is None and rc.rl is None and rc.sft.steps == 200


def test_schema_is_the_dataclass():
  assert "advantage" in schema(RLConfig)
  c = load_config("tracerl")
  c.rl.bogus = 1
  with pytest.raises(ValueError, match=r"^config\.rl\.bogus: unknown key"):
    RunConfig.from_config(c)


@pytest.mark.parametrize("name", ["trace_gae", "nope"])
def test_bad_advantage_is_named(name):
  c = load_config("tracerl")
  c.rl.advantage = name
  with pytest.raises(ValueError, match=r"^config\.rl\.advantage: "):
    RunConfig.from_config(c)


def test_advantage_by_name():
  c = load_config("tracerl")
  c.rl.advantage = "group_mean"
  assert RunConfig.from_config(c).rl.advantage == "group_mean"
  from jdiff.rl.registry import advantage_estimators

  assert advantage_estimators.get("group_zscore") is adv_lib.group_zscore


def test_dtrpo_accepts_shifted_logit_models():
  # dTRPO's single forward reads Dream's shifted logits from the right slots (rl/dtrpo.py).
  c = load_config("dtrpo")
  method = methods.get("dtrpo")
  rc = RunConfig.from_config(c)
  method.check(rc.method_cfg, dataclasses.replace(rc, family="dream"), rc.sampler[1], None)


def test_cj_grpo_rows_per_response_is_the_sampler_steps():
  rc = RunConfig.from_config(load_config("cj_grpo"))
  assert rc.method.rows_per_response(rc.method_cfg, rc.sampler[1]) == rc.sampler[1].steps
