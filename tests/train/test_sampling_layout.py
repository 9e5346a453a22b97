"""config.mesh.sampling_layout: rollouts from FSDP-sharded weights equal gathered ones."""

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from jdiff.models.config import preset
from jdiff.models.transformer import DiffusionLM
from jdiff.sampling import registry
from jdiff.sharding.mesh import make_mesh, shard_state
from jdiff.sharding import rules as rules_lib
from jdiff.train import rollout as rollout_lib


def test_unknown_layout_is_named():
  with pytest.raises(ValueError, match="config.mesh.sampling_layout='sharded'"):
    rules_lib.sampling_rules(
        ConfigDict(dict(mesh=dict(shape=(1, -1, 1), sampling_layout="sharded")))
    )


def test_fsdp_layout_samples_the_same_tokens():
  model = DiffusionLM(preset("mini_sdar"), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cfg = registry.make_config(
      "block",
      dict(gen_length=8, steps_per_block=4, strategy="low_confidence_static", temperature=1.0),
  )
  rng = np.random.default_rng(0)
  prompts = [rng.integers(2, 128, size=n).tolist() for n in (5, 9, 7, 3, 8, 6, 4, 9)]
  mesh = make_mesh((1, -1, 1))  # 8-way fsdp: the training layout shards the weights
  out = {}
  for layout in ("gathered", "fsdp"):
    rules = rules_lib.sampling_rules(ConfigDict(dict(mesh=dict(sampling_layout=layout))))
    sharded = nnx.merge(graphdef, shard_state(params, mesh, rules), shard_state(rest, mesh, rules))
    traj, _ = rollout_lib.rollout(sharded, mesh, "block", cfg, prompts, 0, 12, jax.random.key(3))
    out[layout] = jax.device_get((traj.tokens, traj.step_map))
  if not any(
      len(set(x.sharding.device_set)) > 1 and not x.sharding.is_fully_replicated
      for x in jax.tree.leaves(shard_state(params, mesh, rules_lib.SAMPLING_LAYOUTS["fsdp"]))
  ):
    pytest.fail("the fsdp layout left every weight replicated: the test checks nothing")
  plain, _ = rollout_lib.rollout(
      model, make_mesh((1, 1, 1)), "block", cfg, prompts, 0, 12, jax.random.key(3)
  )
  for layout in out:
    np.testing.assert_array_equal(out[layout][0], np.asarray(plain.tokens))
    np.testing.assert_array_equal(out[layout][1], np.asarray(plain.step_map))
