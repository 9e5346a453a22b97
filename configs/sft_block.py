"""Block-diffusion SFT (SDAR/TraDo: x_t ⊕ x_0, per-block t, 1/t weight) on the embedded
default — the TraceRL config's model, task and data (``mini_sdar``, character tokenizer,
synthetic digit sorting) — no downloads.

  python scripts/sft.py --config configs/sft_block.py [--config.sft.steps=400] [--workdir DIR]
  python scripts/eval.py --config configs/sft_block.py --model DIR/model

For a real checkpoint set ``--config.model.checkpoint=/path/to/sdar`` (its tokenizer is used),
and a dataset with ``--config.task.train_path=data.jsonl`` (targets from its ``response``
field; ``task.field_map`` renames columns).
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  base = tracerl.get_config()
  c = ml_collections.ConfigDict()
  c.seed, c.tensorboard = base.seed, base.tensorboard
  c.model, c.task, c.data, c.sft = base.model, base.task, base.data, base.sft
  # Longer than TraceRL's deliberately short warm start: this run is the SFT result itself.
  c.sft.steps = 300
  c.sft.options = dict(t_per="block", weighting="inverse_t")
  # scripts/eval.py: static = this sampler, dynamic = low_confidence_dynamic at `threshold`.
  c.eval = ml_collections.ConfigDict(
      dict(batch_size=64, threshold=0.9, sampler=dict(base.eval.sampler))
  )
  return c
