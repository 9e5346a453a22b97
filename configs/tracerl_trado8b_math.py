"""TraceRL (no value model) on MATH: the TraDo-8B-Instruct recipe (docs/methods.md §TraceRL block rows (recipes),
`multinode_rl_sdar`; issue #23: RL only, starting from SDAR-8B-Chat). Same data format,
sampler and eval as configs/tracerl_trado4b_math.py (read its docstring); differences: the 8B
backbone, no value model, GA 8 in the reference.

  python scripts/train.py --config configs/tracerl_trado8b_math.py \
      --config.model.checkpoint=/ckpt/SDAR-8B-Chat \
      --config.task.train_path=/data/MATH_train.jsonl --config.task.eval_path=/data/MATH500.jsonl
"""

from jdiff.config_loading import load_sibling

tracerl_trado4b_math = load_sibling(__file__, "tracerl_trado4b_math")


def get_config():
  c = tracerl_trado4b_math.get_config()
  c.model.preset = "sdar_8b"
  c.value.enabled = False  # the 8B recipe trains without the value model (§9)
  c.rl.rows_per_update = 64  # the reference's batch_size 1 x 8 GPUs x GA 8 rows per step
  return c
