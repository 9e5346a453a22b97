"""The block sampler's settings and unmasking strategies (:mod:`jdiff.sampling.block` runs
them): ``BlockSamplerConfig`` with its checks against the model, and the strategies that pick
which masks a denoising step unmasks (docs/methods.md §TraceRL block rows; docs/design.md
"Sampler guards")."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jdiff.models.config import ModelConfig
from jdiff.sampling.common import F32, config_error, is_positive_int, select_top_n

# --------------------------------------------------------------------------- strategies
# Each takes (eligible [B, L] bool, confidence [B, L], logits [B, L, V] of the sampling
# distribution, n_k [B], knobs) and returns the bool [B, L] set of masks to unmask this step.


def _sequential(eligible, conf, dist, n, kn):
  del conf, dist, kn
  return select_top_n(jnp.zeros(eligible.shape, F32), eligible, n)  # ties -> leftmost


def _low_confidence_static(eligible, conf, dist, n, kn):
  del dist, kn
  return select_top_n(conf, eligible, n)


def _low_confidence_dynamic(eligible, conf, dist, n, kn):
  del dist
  above = eligible & (conf > kn.threshold)
  enough = jnp.sum(above, axis=-1) >= n
  return jnp.where(enough[:, None], above, select_top_n(conf, eligible, n))


def _entropy_bounded(eligible, conf, dist, n, kn):
  del conf, n
  probs = jax.nn.softmax(dist, axis=-1)  # only this strategy needs the whole distribution
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0), axis=-1)
  ascending = jnp.sort(jnp.where(eligible, entropy, jnp.inf), axis=-1)
  count = jnp.sum(jnp.cumsum(ascending, axis=-1) <= kn.eb_threshold, axis=-1)
  return select_top_n(-entropy, eligible, jnp.maximum(count, 1))


STRATEGIES = {
    "sequential": _sequential,
    "low_confidence_static": _low_confidence_static,
    "low_confidence_dynamic": _low_confidence_dynamic,
    "entropy_bounded": _entropy_bounded,
}


# --------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class BlockSamplerConfig:
  """Settings of :func:`sample`.

  Shape-like fields (``gen_length``, ``block_length``, ``steps_per_block``, ``top_k``,
  ``stop_ids``, ``record_states``, ``use_cache``) select the compiled program; the others
  (``strategy``, ``temperature``, ``top_p``, ``threshold``, ``eb_threshold``) are passed as
  traced values, so changing them never recompiles. ``row_threads`` only splits the batch
  among host threads (each group's shape is compiled once).
  """

  gen_length: int = 256  # completion length G
  block_length: Optional[int] = None  # None: the model's block_size (the only allowed value)
  steps_per_block: int = 4  # S: steps per block of the transfer schedule
  strategy: str = "low_confidence_dynamic"
  threshold: float = 0.9  # low_confidence_dynamic
  eb_threshold: float = 0.35  # entropy_bounded
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: Optional[Tuple[int, ...]] = None  # None: (eos,); () disables stopping
  record_states: bool = False
  use_cache: bool = True
  # Decode the batch as this many equal groups of rows, each group by its own call of the
  # compiled sampler from its own host thread, all at once (one device, no mesh); same
  # outputs. On a multi-core CPU a small model's step cannot keep the cores busy, separate
  # loops can (see ``row_shards.in_host_threads``).
  row_threads: int = 1
  # Former setting names, for the error a config that still uses one gets.
  RENAMED: ClassVar[Dict[str, str]] = {
      "max_tokens": "gen_length",
      "denoising_steps": "steps_per_block",
  }

  def __post_init__(self):
    if self.stop_ids is not None:  # lists would make the config unhashable
      object.__setattr__(self, "stop_ids", tuple(int(s) for s in self.stop_ids))

  @property
  def num_blocks(self) -> int:
    """The most blocks a completion touches: blocks sit at absolute positions, so a
    completion whose prompt ends inside a block starts in that block."""
    if self.block_length is None:
      raise ValueError(
          "BlockSamplerConfig.block_length=None: validate(model_config) sets it "
          "to the model's block_size"
      )
    return (self.gen_length + self.block_length - 2) // self.block_length + 1

  @property
  def total_steps(self) -> int:
    """The most decoding steps a full decode takes: ``steps_per_block`` per block
    (``entropy_bounded`` steps until the block is full: up to ``block_length``)."""
    per_block = self.block_length if self.strategy == "entropy_bounded" else self.steps_per_block
    return per_block * self.num_blocks

  def validate(self, model_config: Optional[ModelConfig] = None) -> "BlockSamplerConfig":
    """Checks every field (against the model too when ``model_config`` is given); returns a
    copy with the defaults the model fixes (``block_length``, ``stop_ids``) filled in."""
    self._validate_fields()
    if model_config is None:
      return self
    mc = model_config
    name = type(self).__name__
    if mc.family != "sdar" or not mc.block_causal or not mc.block_size:
      raise ValueError(
          f"{name}: the block sampler needs an sdar/trado model, not " f"{mc.family!r}"
      )
    if mc.mask_token_id is None:
      raise ValueError(f"{name}: the model config has no mask_token_id")
    block = mc.block_size if self.block_length is None else self.block_length
    if block != mc.block_size:
      raise ValueError(
          f"{name}.block_length={block} must equal the model's block_size="
          f"{mc.block_size}: blocks sit at absolute positions and training "
          "rebuilds the sampler's states with the model's block-causal mask"
      )
    if self.steps_per_block > block:
      raise config_error(self, "steps_per_block", f"must be in [1, block_length={block}]")
    if self.top_k > mc.vocab_size:
      raise config_error(self, "top_k", f"must be in [0, vocab_size={mc.vocab_size}]")
    stops = (mc.eos_token_id,) if self.stop_ids is None else self.stop_ids
    stops = tuple(s for s in stops if s is not None)
    if any(not 0 <= s < mc.vocab_size for s in stops):
      raise ValueError(f"{name}.stop_ids={stops} must be token ids below {mc.vocab_size}")
    return dataclasses.replace(self, block_length=block, stop_ids=stops)

  def _validate_fields(self) -> None:
    """The checks that need no model."""

    def bad(field, why):
      raise config_error(self, field, why)

    if not is_positive_int(self.gen_length):
      bad("gen_length", "must be a positive int")
    if self.block_length is not None and not is_positive_int(self.block_length):
      bad("block_length", "must be None (the model's block_size) or a positive int")
    if not is_positive_int(self.steps_per_block) or (
        self.block_length is not None and self.steps_per_block > self.block_length
    ):
      bad("steps_per_block", f"must be in [1, block_length={self.block_length}]")
    if self.strategy not in STRATEGIES:
      bad("strategy", f"expected one of {sorted(STRATEGIES)}")
    if not 0.0 < self.threshold <= 1.0:
      bad("threshold", "must be in (0, 1]")
    if not self.eb_threshold > 0.0:
      bad("eb_threshold", "must be positive")
    if not self.temperature >= 0.0:
      bad("temperature", "must be >= 0 (0 = greedy)")
    if not self.top_k >= 0:
      bad("top_k", "must be >= 0 (0 = off)")
    if not 0.0 < self.top_p <= 1.0:
      bad("top_p", "must be in (0, 1]")
    if not is_positive_int(self.row_threads):
      bad("row_threads", "must be a positive int")
    if self.stop_ids is not None and any(s < 0 for s in self.stop_ids):
      bad("stop_ids", "must be token ids >= 0")
