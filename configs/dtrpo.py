"""dTRPO (offline DPO on trajectory log-ratios, docs/methods.md; jdiff/rl/dtrpo.py) on the
embedded default: the mini_sdar model and digit sorting of configs/tracerl.py, the same 200-step
block-SFT warm start, then a fixed preference set built ONCE from the warm-started policy
(8 samples per training prompt with the block sampler; best-reward vs worst-reward completion,
all-equal groups dropped) and epochs of DPO updates against the frozen warm-started policy.
scripts/train.py dispatches here to jdiff/train/offline_loop.py (Method.offline).

  python scripts/train.py --config configs/dtrpo.py [--config.offline.epochs=3] [--workdir DIR]

To train on your own pairs instead, point ``offline.pairs_path`` at a local jsonl (or json /
parquet / csv) file with one pair per row::

  {"prompt": "Sort 3142", "chosen": "<answer>1234</answer>", "rejected": "<answer>1243</answer>"}

(texts; rename other column names with ``offline.field_map={"prompt": "question", ...}``).
Prompts are chat-templated like training prompts; responses get EOS appended. Either way the
pair set lands in ``WORKDIR/pairs.jsonl`` and a resumed run reads it back.
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = tracerl.get_config()
  del c["rl"]  # online-only sections: the offline loop reads config.offline instead
  del c["value"]
  # β is unknown in the paper. Tuned on seed 0 of this task: β 0.5 and the (unbiased) 1/t
  # weight beat β 0.1 / weight 1 (held-out 0.38 vs 0.33). The re-masked estimator scores every
  # masked token (lower variance than the paper's newly_unmasked, same expectation); the grid
  # is the sampler's: mini_sdar blocks of 4 in steps_per_block = 4 steps.
  c.method = ml_collections.ConfigDict(
      dict(
          name="dtrpo",
          beta=0.5,
          estimator="remasked",
          block_weight="inverse_t",
          steps_per_block=4,
          timesteps_per_block=1,
          share_timesteps=False,
          padding="drop",
      )
  )
  # 1024 prompts x 8 samples at T = 1 (the rollout sampler of tracerl.py); pairs from groups
  # with mixed rewards (~550). 2 epochs of 16 pairs per update (~70 updates): a 3rd and 4th
  # epoch overfit the pairs and lose held-out accuracy.
  c.offline = ml_collections.ConfigDict(
      dict(
          pairs_path="",
          field_map={},
          num_prompts=1024,
          group_size=8,
          rollout_batch=16,
          max_response_len=0,
          pairs_per_step=16,
          epochs=2,
          grad_accum=1,
          eval_every=0,
      )
  )
  # DPO wants a gentler step than TraceRL's 1e-4, which cut held-out accuracy 0.25 -> 0.09.
  c.optim = ml_collections.ConfigDict(
      dict(lr=3e-5, schedule="constant", max_grad_norm=1.0, weight_decay=0.0)
  )
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, max_to_keep=2))
  return c
