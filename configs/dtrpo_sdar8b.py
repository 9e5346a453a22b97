"""dTRPO (offline DPO on trajectory log-ratios, jdiff/rl/dtrpo.py) on a real block-diffusion
model: SDAR-8B-Chat or TraDo-8B-Instruct on MATH. A real-model config: it needs a local
checkpoint and data, and refuses to fall back to the embedded toy model.

  python scripts/train.py --config configs/dtrpo_sdar8b.py \
      --config.model.checkpoint=/ckpt/SDAR-8B-Chat \
      --config.task.train_path=/data/MATH_train.jsonl --config.task.eval_path=/data/MATH500.jsonl

Pairs are sampled from the policy itself (``group_size`` completions per training prompt, best
vs worst reward, the sampler's decoding order kept for the newly-unmasked estimator), or read
from ``--config.offline.pairs_path`` (text prompt / chosen / rejected; see configs/dtrpo.py).
Model, data, sampler, eval and mesh follow configs/tracerl_trado8b_math.py (read the
TraDo-4B config's docstring for the data format).

What the dTRPO paper confirms: offline DPO against a frozen reference, one timestep per block,
only the newly unmasked tokens scored, all blocks in one forward with block attention, 7B-scale
dLLMs. EVERY numeric value below is unverified against the paper (marked so): its base models,
β, optimiser, data, pair construction and epochs were not available.
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl_trado8b_math = load_sibling(__file__, "tracerl_trado8b_math")


def get_config():
  c = tracerl_trado8b_math.get_config()  # model sdar_8b (require_checkpoint), MATH, mesh
  del c["rl"]  # online-only sections: the offline loop reads config.offline instead
  del c["value"]
  # Block 4 with at most 4 steps per block (the TraDo sampler inherited from the 8B TraceRL
  # config: B = S = 4, dynamic τ = 0.9; unverified for dTRPO). steps_per_block = 4 is that
  # grid (one token per step) for pairs from a file, which get random orders on it; the paper's
  # estimator (newly_unmasked) replays a self-sampled pair's recorded order, whose T_B is the
  # number of steps the block actually took, so it is exact for the dynamic schedule too.
  c.method = ml_collections.ConfigDict(
      dict(
          name="dtrpo",
          beta=0.1,  # unverified (a common DPO value)
          estimator="newly_unmasked",  # the paper's estimator (confirmed by the project page)
          block_weight="inverse_t",  # only read by estimator="remasked"
          steps_per_block=4,  # T_B = the sampler's steps_per_block per block of 4
          timesteps_per_block=1,  # one t_b per block (confirmed)
          share_timesteps=False,  # unverified
          padding="drop",
      )
  )  # unverified (EOS scored, nothing after it)
  c.offline = ml_collections.ConfigDict(
      dict(
          pairs_path="",
          field_map={},
          num_prompts=0,  # all training prompts: unverified
          group_size=8,  # unverified
          rollout_batch=64,  # a memory / throughput choice
          max_response_len=2000,  # = sampler.gen_length (pairs files only)
          pairs_per_step=64,  # unverified
          epochs=1,  # unverified
          grad_accum=16,  # memory only: 8 rows of ~4,800 tokens per micro-batch
          eval_every=50,
      )
  )
  # AdamW, constant lr 5e-7, clip 1.0: unverified (DPO on 7-8B models commonly uses 5e-7).
  c.optim = ml_collections.ConfigDict(
      dict(
          lr=5e-7,
          schedule="constant",
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          max_grad_norm=1.0,
          weight_decay=0.0,
      )
  )
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, max_to_keep=2))
  return c
