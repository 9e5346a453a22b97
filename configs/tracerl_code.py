"""TraceRL on a synthetic code task with the embedded default (no downloads): prompts such as
"f(x) = x times 3 then plus 2", completions a fenced Python block ("f=lambda x:(x*3)+2"),
rewarded by running the row's three asserts in the sandbox (the fraction passed).

  python scripts/train.py --config configs/tracerl_code.py

A demonstration of the code reward in the RL loop; this config's learning curve has not been
measured. Each rollout runs prompts_per_step x group_size x 3 sandboxed test processes.
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = tracerl.get_config()
  c.task = ml_collections.ConfigDict(
      dict(
          name="code",
          num_train=2000,
          num_eval=64,
          seed=0,
          reward="",
          generator_kwargs=dict(num_ops=2, max_const=9, num_tests=3),
          train_path="",
          eval_path="",
          field_map={},
      )
  )
  # Prompts are at most 48 tokens with the chat template; completions at most 32 characters
  # plus EOS, so 36 tokens (nine blocks of 4).
  c.data.max_prompt_len = 48
  c.sampler.gen_length = 36
  c.eval.sampler.gen_length = 36
  c.sft.max_len = 84
  return c
