"""The samplers' shared interface: entry signature, setting names, counts and validation."""

import inspect

import pytest

import jdiff
from jdiff.sampling import block, dream, llada, registry

MODULES = {"block": block, "llada": llada, "dream": dream}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_one_entry_signature(name):
  params = list(inspect.signature(MODULES[name].sample).parameters)
  assert params[:5] == ["model", "prompt_ids", "prompt_mask", "key", "config"]
  assert registry.get(name).run is MODULES[name].sample


@pytest.mark.parametrize(
    "old,new", [("max_tokens", "gen_length"), ("denoising_steps", "steps_per_block")]
)
def test_old_block_key_names_its_new_name(old, new):
  match = rf"sampler 'block' has no setting '{old}' \(renamed {new}\)"
  with pytest.raises(ValueError, match=match):
    registry.make_config("block", {old: 4})


def _blocks_touched(gen_length, block_length):
  """The most blocks (anchored at position 0) any completion of gen_length tokens touches,
  over every offset of the prompt's end inside a block."""
  return max(
      (r + gen_length - 1) // block_length - r // block_length + 1 for r in range(block_length)
  )


@pytest.mark.parametrize("g,bl", [(10, 4), (8, 4), (1, 4), (5, 1), (33, 8)])
def test_block_counts(g, bl):
  cfg = block.BlockSamplerConfig(gen_length=g, block_length=bl, steps_per_block=1)
  assert cfg.num_blocks == _blocks_touched(g, bl)
  assert cfg.total_steps == cfg.num_blocks
  # entropy_bounded steps until its block is full: up to block_length steps per block.
  assert (
      block.BlockSamplerConfig(
          gen_length=g, block_length=bl, strategy="entropy_bounded"
      ).total_steps
      == bl * cfg.num_blocks
  )


def test_block_counts_need_the_block_length():
  with pytest.raises(ValueError, match="block_length"):
    block.BlockSamplerConfig().num_blocks  # noqa: B018
  mc = jdiff.preset("tiny_sdar")
  cfg = block.BlockSamplerConfig(gen_length=10, steps_per_block=2).validate(mc)
  assert cfg.block_length == mc.block_size
  assert cfg.total_steps == 2 * _blocks_touched(10, mc.block_size)


def test_llada_and_dream_counts():
  cfg = llada.LLaDASamplerConfig(gen_length=16, block_length=8, steps=8)
  assert (cfg.num_blocks, cfg.total_steps) == (2, 8)
  # Threshold decoding commits at least one token per step: at most gen_length steps.
  assert llada.LLaDASamplerConfig(gen_length=16, block_length=8, threshold=0.9).total_steps == 16
  assert (
      llada.LLaDASamplerConfig(gen_length=16, block_length=16, steps=4, schedule="ass").total_steps
      == 4
  )
  d = dream.DreamSamplerConfig(gen_length=16, steps=8)
  assert (d.num_blocks, d.total_steps) == (1, 8)
  d = dream.DreamSamplerConfig(gen_length=16, steps=8, block_length=4)
  assert (d.num_blocks, d.total_steps) == (4, 8)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_validate_without_a_model_checks_the_fields(name):
  cls = registry.get(name).config_cls
  cfg = cls()
  assert cfg.validate() is cfg and cfg.validate(None) is cfg
  with pytest.raises(ValueError, match=rf"{cls.__name__}\.gen_length=0"):
    cls(gen_length=0).validate()


@pytest.mark.parametrize(
    "name,family,match",
    [
        ("block", "tiny_llada", "the block sampler needs an sdar/trado model, not 'llada'"),
        ("block", "tiny_dream", "the block sampler needs an sdar/trado model, not 'dream'"),
        ("llada", "tiny_sdar", "the llada sampler needs a bidirectional, unshifted model"),
        ("llada", "tiny_dream", "the llada sampler needs a bidirectional, unshifted model"),
        ("dream", "tiny_sdar", "the dream sampler needs a bidirectional model, not 'sdar'"),
    ],
)
def test_validate_checks_the_model_family(name, family, match):
  with pytest.raises(ValueError, match=match):
    registry.get(name).config_cls().validate(jdiff.preset(family))


@pytest.mark.parametrize(
    "name,family",
    [
        ("block", "tiny_sdar"),
        ("llada", "tiny_llada"),
        ("dream", "tiny_dream"),
        ("dream", "tiny_llada"),
    ],
)
def test_validate_accepts_its_models(name, family):
  registry.get(name).config_cls().validate(jdiff.preset(family))


def test_block_steps_per_block_checked_against_the_model_block():
  mc = jdiff.preset("tiny_sdar")
  cfg = block.BlockSamplerConfig(steps_per_block=mc.block_size + 1)
  cfg.validate()  # no block length yet: nothing to compare against
  with pytest.raises(ValueError, match="BlockSamplerConfig.steps_per_block="):
    cfg.validate(mc)
