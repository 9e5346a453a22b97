"""CJ-GRPO with EOSER + ASS decoding on Countdown with LLaDA-8B-Instruct
(docs/methods.md §CJ-GRPO, EOSER and ASS: cj-grpo/slurm_scripts/train.yaml and the code's asserts).
A real-model config: it needs a local checkpoint and data and refuses to fall back to the
embedded toy model.

  python scripts/train.py --config configs/cj_grpo_llada8b_countdown.py \
      --config.model.checkpoint=/ckpt/LLaDA-8B-Instruct \
      --config.task.train_path=/data/countdown_train.jsonl \
      --config.task.eval_path=/data/countdown_cd3_test.jsonl

Data: local jsonl / json / parquet / csv (Jiayi-Pan/Countdown-Tasks-3to4 filtered to 3
numbers; d1 holds out the last 500 after a seed-42 shuffle), one problem per row with
  - ``prompt``: d1's XML format instruction and the task text ("Using the numbers [..],
    create an equation that equals T ..."); the chat template is applied here;
  - ``numbers``: the list of integers; ``target``: the integer to reach (the `countdown`
    reward: 1.0 correct, 0.1 well-formed, 0 missing).
The test file countdown_cd3_test.jsonl has {"input": "a,b,c", "output": "target"}: convert it
to the columns above (numbers as a list of ints) before use.

Not reproduced: LoRA (r 128, α 64; all weights train in bfloat16 here); dropped rather than
left-truncated over-long prompts; eval's \\boxed{expr} instruction and "<reasoning>" prefill.
"""

import ml_collections

from jdiff.config_loading import load_sibling

d1_llada8b_gsm8k = load_sibling(__file__, "d1_llada8b_gsm8k")


def get_config():
  c = d1_llada8b_gsm8k.get_config()  # d1's optimizer, batch, β, ε, max_prompt_len 200
  c.task = ml_collections.ConfigDict(
      dict(
          name="countdown",
          reward="countdown",
          num_train=0,
          num_eval=0,
          seed=0,
          generator_kwargs={},
          train_path="data/countdown_train.jsonl",
          eval_path="data/countdown_cd3_test.jsonl",
          field_map={},
          # CJ-GRPO (d1's reward code) scores the whole completion, special tokens skipped.
          length_penalty=False,
          reward_text="whole",
      )
  )
  # Training decoding: EOSER + ASS, τ 1.0, L 128 (run scripts) -> steps = log2(128) = 7 with
  # γ_min 0.01, γ_max 1.0. The run scripts' block_num (64) violates the asserts; one block
  # (full diffusion, like the eval) is the choice here.
  c.sampler = ml_collections.ConfigDict(
      dict(
          name="llada",
          gen_length=128,
          block_length=128,
          steps=7,
          temperature=1.0,
          remasking="low_confidence",
          schedule="ass",
          eoser=True,
          eos_min_gamma=0.01,
          eos_max_gamma=1.0,
          record_states=True,
      )
  )
  # Eval (eval/run_eval.sh): L 256, one block, 8 steps, EOSER + ASS, greedy.
  c.eval = ml_collections.ConfigDict(
      dict(
          batch_size=8,
          sampler=dict(
              name="llada",
              gen_length=256,
              block_length=256,
              steps=8,
              temperature=0.0,
              remasking="low_confidence",
              schedule="ass",
              eoser=True,
              eos_min_gamma=0.01,
              eos_max_gamma=1.0,
          ),
      )
  )
  # μ = 8 (Countdown), ε 0.5, β 0.04 (§3.4). Each step's B rows in their own micro-batch
  # ("accumulate": activation memory of one step's forward): grad_accum = 2 x S = 14 (d1's GA 2
  # times the 7 steps; 2 divides the 96 responses, so micro-batches stay single-step).
  c.method = ml_collections.ConfigDict(
      dict(
          name="cj_grpo",
          eps=0.5,
          beta=0.04,
          num_iterations=8,
          step_batching="accumulate",
          grad_accum=14,
      )
  )
  # 16 prompts x G = 6, advantage r − group mean. Length: not given for CJ-GRPO; d1 stopped
  # Countdown at 5,000 updates -> 5000 / μ = 625 RL steps (a choice).
  c.rl.steps = 625
  c.rl.grad_accum = 14
  c.rl.eval_every = 12  # d1's every 100 updates / μ 8 ≈ 12
  c.checkpoint.every = 12
  # d1's LoRA (r 128, alpha 64, same effective targets) on a bf16 base: CJ-GRPO's code leaves
  # the 4-bit quantisation line commented out (docs/methods.md).
  c.model.lora.quantize_base = "none"
  return c
