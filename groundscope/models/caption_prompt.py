"""The caption head's token sequences: where the visual tokens go, which tokens are supervised, where the
sequence is cut.

Three templates (``CaptionHeadConfig.template``):

- ``chatml`` (LLMDet's; official: iSEE-Laboratory/LLMDet mmdet/datasets/transforms/text_transformers.py
  ~L296-394). LLMDet resets the tokenizer's chat template to a bare ChatML one and renders, whatever template
  the tokenizer carries::

      <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
      <|im_start|>user\\n<image>\\n{prompt}<|im_end|>\\n
      <|im_start|>assistant\\n{answer}<|im_end|>\\n

  Supervised (labels = ids): the whole assistant turn with its header and its closing ``<|im_end|>\\n``, and in
  the system and user turns every ``\\n``, ``<|im_start|>`` and ``<|im_end|>`` token (the official
  ``unmask_tokens_idx = [198, im_start, im_end]``, 198 being Qwen2's ``\\n``; here: the id ``"\\n"`` alone
  encodes to). Generation stops at ``<|im_end|>``.
- ``tokenizer``: the tokenizer's own chat template (user turn ``<image>\\n{prompt}``, generation prompt), or
  ``plain`` when it has none; supervised: the answer and EOS. (groundscope's layout before LLMDet's was
  rendered; heads saved without a ``template`` key load with it.)
- ``plain``: ``{bos}<image> {prompt}\\n{answer}{eos}`` for an LM without chat tokens (the synthetic world LM);
  supervised: the answer and EOS.
- ``auto``: ``chatml`` when the tokenizer has ``<|im_start|>`` and ``<|im_end|>`` tokens, else ``tokenizer``.

Truncation follows LLMDet: ``max_tokens`` bounds the *whole* sequence, prompt + visual tokens + answer (image
captions: ``tokenizer_model_max_length = 1600`` applied after the visual tokens are spliced in, official
llava/model/llava_arch.py ~L541-547, set at mmdet/models/detectors/grounding_dino.py ~L454; regions:
``input_ids[:, :40]`` with one id for the region token, grounding_dino.py ~L1029). The tail is cut, closing
tokens included.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SYSTEM_PROMPT = "You are a helpful assistant."  # official text_transformers.py ~L317
TEMPLATES = ("auto", "chatml", "tokenizer", "plain")


class PromptError(ValueError):
    """A template cannot be rendered with this tokenizer, or a limit leaves no room for the answer."""


def chatml_turn(role: str, content: str) -> str:
    """One message as LLMDet's reset chat template renders it (text_transformers.py ~L299)."""
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_chatml(prompt: str, answer: str | None, system: str = SYSTEM_PROMPT) -> str:
    """The full ChatML text of one LLMDet conversation (``<image>`` where the visual tokens go); with
    ``answer=None`` it ends with the assistant header, where generation starts."""
    text = chatml_turn("system", system) + chatml_turn("user", f"{IMAGE_TOKEN}\n{prompt}")
    return text + (chatml_turn("assistant", answer) if answer is not None else f"{IM_START}assistant\n")


def has_chatml(tokenizer) -> bool:
    """Whether `tokenizer` holds ``<|im_start|>`` and ``<|im_end|>`` as single tokens."""
    vocab = tokenizer.get_vocab()
    return IM_START in vocab and IM_END in vocab


@dataclass
class Layout:
    """The fixed parts of one template for one prompt.

    Attributes:
        before / before_labels: ids before the visual tokens and their labels (IGNORE_INDEX or the id).
        after / after_labels: ids between the visual tokens and the answer.
        generation: ids after `after` that open the answer when generating (the assistant header in ChatML).
        stop: ids that end generation.
        after_text: the text `after` encodes (an answer is tokenized after it outside ChatML).
    """

    template: str
    before: list[int]
    before_labels: list[int]
    after: list[int]
    after_labels: list[int]
    generation: list[int]
    stop: list[int]
    after_text: str = ""


def resolve_template(template: str, tokenizer) -> str:
    if template not in TEMPLATES:
        raise PromptError(f"caption template '{template}': use one of {', '.join(TEMPLATES)}")
    if template == "auto":
        template = "chatml" if has_chatml(tokenizer) else "tokenizer"
    if template == "chatml" and not has_chatml(tokenizer):
        raise PromptError(f"caption template 'chatml' needs {IM_START} and {IM_END} tokens, which this tokenizer "
                          "lacks; use template 'tokenizer' or 'plain' (or 'auto')")
    if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        return "plain"
    return template


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def build_layout(tokenizer, prompt: str, template: str, system: str = SYSTEM_PROMPT) -> Layout:
    """The `Layout` of `prompt` under `template` (resolved with `resolve_template`)."""
    kind = resolve_template(template, tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if kind == "chatml":
        head, tail = render_chatml(prompt, None, system).split(IMAGE_TOKEN, 1)
        after_text, gen_text = tail.rsplit(IM_START, 1)
        # The visual tokens and the special tokens split the text: encoding the pieces apart gives the ids the
        # official per-message `apply_chat_template` gives.
        before, after = _ids(tokenizer, head), _ids(tokenizer, after_text)
        unmask = {tokenizer.convert_tokens_to_ids(IM_START), tokenizer.convert_tokens_to_ids(IM_END)}
        newline = _ids(tokenizer, "\n")
        if len(newline) == 1:
            unmask.add(newline[0])
        lab = lambda ids: [i if i in unmask else IGNORE_INDEX for i in ids]  # noqa: E731
        return Layout(kind, before, lab(before), after, lab(after), _ids(tokenizer, IM_START + gen_text),
                      [tokenizer.convert_tokens_to_ids(IM_END)] + eos, after_text)
    if kind == "tokenizer":
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"{IMAGE_TOKEN}\n{prompt}"}],
                                             tokenize=False, add_generation_prompt=True)
        head, after_text = text.split(IMAGE_TOKEN, 1)
        before = _ids(tokenizer, head)
    else:
        after_text = f" {prompt}\n"
        before = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    after = _ids(tokenizer, after_text)
    return Layout(kind, before, [IGNORE_INDEX] * len(before), after, [IGNORE_INDEX] * len(after), [], eos,
                  after_text)


def answer_ids(tokenizer, layout: Layout, answer: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of an answer as it follows the prompt.

    ChatML: the assistant turn ``<|im_start|>assistant\\n{answer}<|im_end|>\\n``, all supervised. Otherwise the
    answer tokenized together with the text before it (a word after the prompt's newline can be another token
    than at the start of a text) plus EOS, all supervised.
    """
    if layout.template == "chatml":
        ids = _ids(tokenizer, chatml_turn("assistant", answer))
        return ids, list(ids)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    joint = _ids(tokenizer, layout.after_text + answer)
    n = len(layout.after)
    ids = joint[n:] if joint[:n] == layout.after else _ids(tokenizer, answer)
    ids = ids + eos
    return ids, list(ids)
