"""TraceRL + diffusion value model on MATH: the TraDo-4B-Instruct recipe
(docs/methods.md §TraceRL block rows (recipes), `multinode_rl_sdar_with_value`; issues #23, #35: RL only, starting
from SDAR-4B-Chat). A real-model config: it needs a local checkpoint and data, and refuses to
fall back to the embedded toy model.

  python scripts/train.py --config configs/tracerl_trado4b_math.py \
      --config.model.checkpoint=/ckpt/SDAR-4B-Chat \
      --config.task.train_path=/data/MATH_train.jsonl --config.task.eval_path=/data/MATH500.jsonl

Checkpoint: an HF directory (config.json, *.safetensors [+ index], tokenizer files) of
SDAR-4B-Chat (the recipe's start) or TraDo-4B-Instruct (to continue from it), or a jdiff
checkpoint. Data: local jsonl / json / parquet / csv, one problem per row with
  - ``prompt``: the question followed by "\\nPlease reason step by step, and put your final
    answer within \\boxed{}." (the reference's math prompt, §10; the chat template is applied
    here, so do not add <|im_start|> markers);
  - ``answer``: the gold final answer (compared with the last \\boxed{} by the `math` reward).
Other column names: ``--config.task.field_map='{"prompt": "question", "answer": "gt"}'``.

Deviations from the reference (the loop's, not this config's): eval draws 1 sample per problem
(the reference: 3) and runs the dynamic setting only.
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = tracerl.get_config()
  # SDAR/TraDo-4B: Qwen3 backbone, block size 4 (§2). The preset names the expected
  # architecture (validate_config checks sampler settings against it); weights come from
  # `checkpoint`, which must be set (require_checkpoint).
  c.model = ml_collections.ConfigDict(
      dict(
          checkpoint="",
          tokenizer="",
          family="sdar",
          preset="sdar_4b",
          param_dtype="bfloat16",
          dtype="bfloat16",
          remat="full",
          require_checkpoint=True,
          # Training rows are P + G + B + G = 4788 tokens: dense attention's [rows, heads, N, N]
          # scores would be 1.4 GB a row and head set; chunked (flash-style) tiles never hold them.
          attention_impl="chunked",
      )
  )
  c.task = ml_collections.ConfigDict(
      dict(
          name="math",
          reward="",
          num_train=0,
          num_eval=0,
          seed=0,
          generator_kwargs={},
          train_path="data/MATH_train.jsonl",
          eval_path="data/MATH500.jsonl",
          field_map={},
          # The reference's math reward scores a response reaching max_tokens - 5 as incorrect;
          # the block sampler stops at the EOS, so the text is the response up to it
          # (docs/methods.md §Rewards and advantages).
          length_penalty=True,
          reward_text="to_eos",
      )
  )
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=784, use_chat_template=True))
  # RL only: TraDo-4B starts directly from SDAR-4B-Chat (no SFT stage).
  c.sft.steps = 0
  # Rollouts: dynamic τ = 0.9, B = S = 4, T = 1.0, top_p 1.0, top_k 0, max_token 2000 (§9).
  c.sampler = ml_collections.ConfigDict(
      dict(
          name="block",
          gen_length=2000,
          steps_per_block=4,
          strategy="low_confidence_dynamic",
          threshold=0.9,
          temperature=1.0,
          top_k=0,
          top_p=1.0,
      )
  )
  # Eval (trado_eval.yaml, §10): dynamic τ = 0.9, T = 1.0, top_k 0, B = S = 4, 2000 tokens.
  # batch_size: not in the spec (the engine batches continuously); 64 is a choice.
  c.eval = ml_collections.ConfigDict(
      dict(
          batch_size=64,
          sampler=dict(
              name="block",
              gen_length=2000,
              steps_per_block=4,
              strategy="low_confidence_dynamic",
              threshold=0.9,
              temperature=1.0,
              top_k=0,
              top_p=1.0,
          ),
      )
  )
  # Training block 4, shrink 1, ε 0.2, β 0.01 (k3 KL against the pre-update policy) (§5.6, §9).
  # post_num 0: pad == EOS (<|endoftext|>), so the stop token is never trained; L1 is the
  # step's longest response (the reference right-pads to it, capped at max_gen_length 2000)
  # (docs/methods.md §TraceRL block rows, steps 5-6); k3 KL (kl_estimator's default).
  c.method = ml_collections.ConfigDict(
      dict(name="tracerl", shrink=1, eps=0.2, beta=0.01, kl_against="old", post_num=0, l1="longest")
  )
  # Value model (§7): a full backbone copy with a zero-initialised head, γ = λ = 1, value
  # clip 0.2, trained every step at lr 5e-6.
  c.value = ml_collections.ConfigDict(
      dict(
          enabled=True,
          gamma=1.0,
          lam=1.0,
          eps=0.2,
          train_value_every=1,
          optim=dict(lr=5e-6, schedule="constant", max_grad_norm=1.0, weight_decay=0.0),
      )
  )
  # 128 prompts x 32 responses, 80 steps, eval every 10 (§9); math group filter 0.2-0.8 and
  # group z-score advantages (§4); Adam re-created every RL step like the reference (§5.6).
  # One optimizer step per 64 rows in rollout order, as the reference (batch_size 1 x 16 GPUs x
  # GA 4, docs/methods.md); grad_accum 2 (a choice, memory only): 32 rows per micro-batch.
  c.rl = ml_collections.ConfigDict(
      dict(
          steps=80,
          prompts_per_step=128,
          group_size=32,
          inner_epochs=1,
          rows_per_update=64,
          grad_accum=2,
          std_normalize=True,
          filter_groups=True,
          filter_low=0.2,
          filter_high=0.8,
          reset_optimizer=True,
          eval_every=10,
          # Scheduling, not the recipe: 4096 rows' block-sampler KV caches (~0.4 GB a row at
          # P + G = 2784) cannot be held at once; 256 rows per sampler call (64 per v5p chip)
          # hold ~26 GB of cache a chip. The trajectory does not depend on it (per-row keys).
          rollout_batch=256,
      )
  )
  # AdamW β 0.9/0.999, eps 1e-8, wd 0, clip 1.0, constant lr 1e-6, no warmup (§5.6, §9).
  c.optim = ml_collections.ConfigDict(
      dict(
          lr=1e-6,
          schedule="constant",
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          max_grad_norm=1.0,
          weight_decay=0.0,
      )
  )
  c.checkpoint = ml_collections.ConfigDict(dict(every=10, max_to_keep=2))
  # FSDP over every device; rollouts sample from the training shards ("fsdp") rather than a
  # full bf16 copy per device (8-16 GB), a memory choice for 4B/8B models.
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), sampling_layout="fsdp"))
  return c
