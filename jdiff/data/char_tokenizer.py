"""A character-level Hugging Face tokenizer for tiny diffusion LMs.

Built with the ``tokenizers`` library (a ``WordLevel`` model over single
characters, a pre-tokenizer that isolates every character including spaces
and newlines, and a ``Fuse`` decoder so decoding concatenates characters with
nothing inserted).  ``save_pretrained`` writes standard files that
``transformers.AutoTokenizer.from_pretrained`` loads offline without custom
code.

Fixed special-token ids (always the first ids of the vocabulary):

====  ==================  =====================================
id    token               role
====  ==================  =====================================
0     ``<|endoftext|>``   eos and pad
1     ``<|mask|>``        mask token of the diffusion LM
2     ``<|im_start|>``    chat turn start
3     ``<|im_end|>``      chat turn end
4     ``<unk>``           unknown character
====  ==================  =====================================

Alphabet characters follow from id 5 in alphabet order.  With the default
alphabet (digits, ASCII letters, punctuation, space, newline: 96 characters)
the vocabulary size is 101.  Characters outside the alphabet (e.g. tabs or
non-ASCII letters) encode to ``<unk>``.
"""

from __future__ import annotations

import string
from typing import Dict, Optional, TYPE_CHECKING, Tuple

if TYPE_CHECKING:  # heavy imports are deferred to build time
  from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: Tuple[str, ...] = (EOS_TOKEN, MASK_TOKEN, IM_START, IM_END, UNK_TOKEN)

DEFAULT_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"

# Qwen-like chat template; the system turn is optional.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_char_tokenizer(alphabet: Optional[str] = None) -> "PreTrainedTokenizerFast":
  """Build the character tokenizer over ``alphabet`` (default: ``DEFAULT_ALPHABET``).

  Duplicate characters in ``alphabet`` are ignored (first occurrence wins).
  The returned tokenizer has ``eos_token == pad_token == "<|endoftext|>"``,
  ``mask_token == "<|mask|>"``, ``<|im_start|>``/``<|im_end|>`` as
  additional special tokens, ``clean_up_tokenization_spaces=False`` (so
  decoding is exact) and the Qwen-like ``CHAT_TEMPLATE``.
  """
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  alphabet = DEFAULT_ALPHABET if alphabet is None else alphabet
  chars = list(dict.fromkeys(alphabet))
  if not chars:
    raise ValueError("alphabet must contain at least one character")
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  for ch in chars:
    vocab.setdefault(ch, len(vocab))

  backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
  # `[\s\S]` matches any single character, newlines included.
  backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
  backend.decoder = decoders.Fuse()
  backend.add_special_tokens(
      [AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS]
  )

  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=backend,
      eos_token=EOS_TOKEN,
      pad_token=EOS_TOKEN,
      unk_token=UNK_TOKEN,
      mask_token=MASK_TOKEN,
      additional_special_tokens=[IM_START, IM_END],
      clean_up_tokenization_spaces=False,
      padding_side="left",
      model_max_length=1 << 20,
  )
  tokenizer.chat_template = CHAT_TEMPLATE
  return tokenizer


def special_token_ids(tokenizer) -> Dict[str, int]:
  """Return ``{"mask": ..., "eos": ..., "pad": ...}`` ids of a tokenizer.

  Works for any HF tokenizer; the mask id comes from ``mask_token`` (or a
  ``<|mask|>`` / ``<|mdm_mask|>`` token in the vocabulary), the pad id
  falls back to eos when the tokenizer has no pad token.
  """
  mask_id = getattr(tokenizer, "mask_token_id", None)
  if mask_id is None:
    vocab = tokenizer.get_vocab()
    for name in (MASK_TOKEN, "<|mdm_mask|>", "[MASK]", "<mask>"):
      if name in vocab:
        mask_id = vocab[name]
        break
  if mask_id is None:
    raise ValueError("tokenizer has no mask token")
  eos_id = tokenizer.eos_token_id
  if eos_id is None:
    raise ValueError("tokenizer has no eos token")
  pad_id = tokenizer.pad_token_id
  return {
      "mask": int(mask_id),
      "eos": int(eos_id),
      "pad": int(eos_id if pad_id is None else pad_id),
  }
