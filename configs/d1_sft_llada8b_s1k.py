"""d1 stage 1: LLaDA masked SFT on s1K (docs/methods.md §SFT objectives), for scripts/sft.py.
Its output model is the starting checkpoint of configs/d1_llada8b_gsm8k.py ("d1-LLaDA").

  python scripts/sft.py --config configs/d1_sft_llada8b_s1k.py \
      --config.model.checkpoint=/ckpt/LLaDA-8B-Instruct --config.task.train_path=/data/s1k.jsonl

Data: a local jsonl / json / parquet / csv built from simplescaling/s1K (1,000 rows), with
  - ``prompt``: d1's XML format instruction, a blank line, then the question (the chat
    template is applied here);
  - ``response``: "<reasoning>{thinking_trajectories[0]}</reasoning>\\n<answer>{attempt}</answer>"
    (EOS is appended; the EOS padding up to max_len is in the loss, as in d1).
Rename columns with ``--config.task.field_map='{"prompt": "question", "response": "target"}'``.

Differences from d1: LoRA (r 128, α 256, q/k/v) is not supported — all weights train in
bfloat16; d1 holds out 1% for eval, this trains on every row (set task.num_train=990 to hold
out the tail yourself).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tensorboard = True
  c.model = ml_collections.ConfigDict(
      dict(
          checkpoint="",
          tokenizer="",
          family="llada",
          preset="llada_8b",
          param_dtype="bfloat16",
          dtype="bfloat16",
          remat="full",
          require_checkpoint=True,
      )
  )
  # The task only names the row source here (SFT computes no reward).
  c.task = ml_collections.ConfigDict(
      dict(
          name="math",
          reward="",
          num_train=0,
          num_eval=0,
          seed=0,
          generator_kwargs={},
          train_path="data/s1k.jsonl",
          eval_path="",
          field_map={},
      )
  )
  # max_prompt_len: not in the spec (d1 right-pads prompt + response to 4096); 1024 is a choice.
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=1024, use_chat_template=True))
  # t ~ U(0,1) -> (1-ε)t + ε with ε = 1e-3, every response position (EOS padding included)
  # masked with probability t, CE / t; max_length 4096. lr 1e-5, weight decay 0.1, max grad
  # norm 1.0. Batch: 1 per device x GA 4 x 4 GPUs = 16; 20 epochs of 1,000 rows = 1,250 steps.
  # LR schedule: not in the spec (HF Trainer's default is linear decay); constant is a choice.
  c.sft = ml_collections.ConfigDict(
      dict(
          steps=1250,
          batch_size=16,
          max_len=4096,
          objective="sft_llada",
          pad_in_loss=True,
          grad_accum=4,
          options=dict(eps=1e-3),
          optim=dict(lr=1e-5, schedule="constant", weight_decay=0.1, max_grad_norm=1.0),
      )
  )
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))  # FSDP over every device
  return c
