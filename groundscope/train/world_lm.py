"""A tiny causal language model pretrained on the synthetic world's text (LLMDet's captioning LM, offline).

LLMDet fine-tunes a detector while a causal LM (Qwen2-0.5B in the paper) writes the image's long caption and
each region's phrase from detector features. With no network there is no Qwen2 to load, so this module builds
a stand-in that already "speaks" the synthetic world's language:

* `world_texts`: the sentences of a world's ``groundingcap.jsonl`` (long captions, region phrases as short
  sentences, region descriptions).
* `build_world_tokenizer`: a closed word-level vocabulary over those sentences (``tokenizers`` ``WordLevel``).
* `build_world_lm`: a random-initialised `LlamaForCausalLM` with tied input/output embeddings.
* `pretrain_world_lm`: next-token training on packed ``<s> text </s>`` documents; saves a folder that
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load.

Tokenizer design (why not plain whitespace + punctuation splitting): the pre-tokenizer marks every word that
follows a space with ``▁`` (SentencePiece's metaspace) and then isolates punctuation and single digits, so
``"A 593 by 524 image, grid-lined."`` becomes ``▁A ▁5 9 3 ▁by ▁5 2 4 ▁image , ▁grid - lined .``. Decoding
concatenates the tokens and turns ``▁`` back into spaces, so ``decode(encode(x)) == x`` for any text made of
known words (after whitespace runs are collapsed to one space): digits rejoin into numbers, hyphenated words
keep their hyphen and no space appears before punctuation. A bare whitespace split would need a decoder that
guesses where spaces go, and none of the library's serialisable decoders rejoins ``5 9 3`` or ``grid - lined``.
Case is kept (no lower-casing normaliser) so generated captions read as written, capitals at sentence starts;
it costs only a handful of extra vocabulary entries (``▁A`` / ``▁a``, ``▁In`` / ``▁in``).
A word never seen when the vocabulary was built encodes to ``<unk>`` (decoded as the literal ``<unk>``).

No post-processor is set: ``tokenizer(text)`` returns the words' ids only and callers add ``bos`` / ``eos``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0..3 in this order (the trainer puts specials first)
METASPACE = "\u2581"  # "▁": marks a token that followed a space


# ------------------------------------------------------------------------------------------------- texts


def _phrase_sentence(phrase: str | None) -> str:
    """``"small red circle"`` -> ``"Small red circle."``: the region target the caption head trains on
    (`clean_region_phrase`), or "" when nothing is left of the phrase."""
    from groundscope.data.caption_clean import clean_region_phrase

    try:
        return clean_region_phrase(phrase) if phrase else ""
    except ValueError:
        return ""


def world_texts(groundingcap_jsonl: str | Path, instructions: tuple[str, str] | None = None) -> list[str]:
    """The sentences of a synthetic world's ``groundingcap.jsonl``, in file order.

    Per image: its long caption (the ``gpt`` turn of ``conversations``), then for each region its phrase as a
    short capitalised sentence (``"Medium checkered blue circle."``) followed by its ``description`` (when
    present). Repeats are kept on purpose: frequencies are part of the language the LM should learn.

    With ``instructions = (image_prompt, region_prompt)`` the texts are instead the two tasks the LLMDet head
    asks for, in its prompt format without a chat template (`groundscope.models.captioner`): ``"{image_prompt}\n
    {caption}"``, and ``"{region_prompt}\n{phrase}."`` for each region's phrase and its class name (detection
    prompts name a box by its class). An instruction-tuned LM, as LLaVA-OneVision's Qwen2 is, then follows the
    head's prompt from the first step; descriptions are left out (no head task asks for them).
    Raises `groundscope.data.DataFormatError` (naming file and line) on a missing or malformed file.
    """
    from groundscope.data.groundingcap import read_groundingcap

    texts: list[str] = []
    for image in read_groundingcap(groundingcap_jsonl).images:
        if image.long_caption and image.long_caption.strip():
            caption = image.long_caption.strip()
            texts.append(f"{instructions[0]}\n{caption}" if instructions else caption)
        for inst in image.instances:
            if instructions:
                names = [inst.phrase, inst.category] if getattr(inst, "category", None) else [inst.phrase]
                texts += [f"{instructions[1]}\n{t}" for t in map(_phrase_sentence, names) if t]
                continue
            if inst.phrase:
                sentence = _phrase_sentence(inst.phrase)
                if sentence:
                    texts.append(sentence)
            if inst.description and inst.description.strip():
                texts.append(inst.description.strip())
    return texts


# --------------------------------------------------------------------------------------------- tokenizer


def build_world_tokenizer(texts: Iterable[str]):
    """A word-level fast tokenizer whose vocabulary is every token of ``texts`` (design in the module doc).

    Returns a `transformers.PreTrainedTokenizerFast` with ``pad_token="<pad>"`` (id 0), ``unk_token="<unk>"``
    (1), ``bos_token="<s>"`` (2), ``eos_token="</s>"`` (3); word ids follow in decreasing frequency.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    # Newlines (a multi-turn caption is joined with "\n") and double spaces would otherwise end up inside tokens.
    core.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    core.pre_tokenizer = pre_tokenizers.Sequence([
        # "A 593 by" -> "▁A", "▁593", "▁by"; prepend "always" gives the first word its "▁" too, so a caption
        # starts with the same token whether or not "<s> " precedes it.
        pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True),
        # Isolate single digits (closed vocabulary for numbers) and punctuation, each keeping its "▁" if it
        # had one: "▁593" -> "▁5", "9", "3"; "▁circle." -> "▁circle", ".";
        # "▁grid-lined" -> "▁grid", "-", "lined".
        pre_tokenizers.Split(Regex(f"{METASPACE}?[0-9]|{METASPACE}?[^\\w{METASPACE}]"), behavior="isolated"),
    ])
    core.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), show_progress=False))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        # The decoder already places every space; the generic clean-up would only do harm (" 's" etc.).
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def extend_world_tokenizer(tokenizer, texts: Iterable[str], add_bos: bool = False):
    """A copy of a `build_world_tokenizer` tokenizer whose vocabulary also holds every token of ``texts``.

    Known tokens keep their ids; new ones follow in decreasing frequency (ties alphabetical), so a model's
    embedding matrix only grows at the end (resize it to ``len(new)``). With ``add_bos`` the copy puts
    ``<s>`` in front of every call, as Llama's tokenizer does (what DAM's prompt tokenization expects).
    Returns ``(tokenizer, added)``: the new tokenizer and the list of added tokens.
    """
    from collections import Counter

    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    if spec.get("model", {}).get("type") != "WordLevel":
        raise ValueError("extend_world_tokenizer needs a word-level tokenizer (build_world_tokenizer's)")
    vocab: dict[str, int] = spec["model"]["vocab"]
    counts: Counter[str] = Counter()
    for text in texts:
        normal = backend.normalizer.normalize_str(text) if backend.normalizer else text
        counts.update(tok for tok, _ in backend.pre_tokenizer.pre_tokenize_str(normal))
    added = sorted((t for t in counts if t not in vocab), key=lambda t: (-counts[t], t))
    start = max(vocab.values()) + 1
    for k, tok in enumerate(added):
        vocab[tok] = start + k
    core = Tokenizer.from_str(json.dumps(spec))
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{tokenizer.bos_token} $A", pair=f"{tokenizer.bos_token} $A $B",
            special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
    out = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token,
        bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token, clean_up_tokenization_spaces=False,
        model_max_length=tokenizer.model_max_length)
    return out, added


# ------------------------------------------------------------------------------------------------- model


def build_world_lm(tokenizer, hidden: int = 256, layers: int = 4, heads: int = 4, max_positions: int = 512,
                   intermediate: int | None = None):
    """A random-initialised `LlamaForCausalLM` sized for ``tokenizer`` (seed torch before calling).

    Llama rather than Qwen2 (the paper's LM; the same pre-norm RoPE + SwiGLU decoder apart from Qwen2's q/k/v
    biases) because transformers 5 maps the ``qwen2`` model type to ``Qwen2Tokenizer`` whatever
    ``tokenizer_config.json`` says, and that class rebuilds a byte-level pipeline around our word vocabulary:
    ``AutoTokenizer.from_pretrained`` would then mis-encode and mis-decode. ``llama`` keeps the saved
    ``tokenizer.json`` pipeline.

    ``input_ids (B, T)`` -> ``logits (B, T, V)`` with ``V = len(tokenizer)``; ``T <= max_positions`` is not
    enforced (RoPE) but positions past it were never trained. Input and output embeddings are tied (one
    ``(V, hidden)`` matrix), as in Qwen2-0.5B. ``intermediate`` defaults to ``3 * hidden``: SwiGLU has three
    matrices, so this is about the parameter count of a classic ``4 * hidden`` two-matrix MLP.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,  # no grouped-query attention: the KV cache of a 4-layer model is tiny anyway
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return model


# ---------------------------------------------------------------------------------------------- training


class PackedStream:
    """Endless stream of ``(B, T)`` token blocks cut from ``<s> text </s>`` documents laid end to end.

    Each pass over the corpus shuffles the documents anew (seeded) and appends them to a buffer; a batch
    takes the next ``B * T`` tokens. Packing wastes no compute on padding, which matters here: region phrases
    are ~5 tokens and long captions ~170. Attention crosses document boundaries; the model learns that a
    fresh document starts after ``</s> <s>`` regardless of what preceded it.
    """

    def __init__(self, docs: Sequence[Sequence[int]], seed: int):
        if not docs:
            raise ValueError("no documents to train on")
        self.docs = [torch.as_tensor(d, dtype=torch.long) for d in docs]
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0, dtype=torch.long)
        self.epochs = 0

    def next_batch(self, batch_size: int, seq_len: int) -> torch.Tensor:
        """The next ``(batch_size, seq_len)`` int64 block of token ids."""
        need = batch_size * seq_len
        parts = [self.buffer]
        have = self.buffer.numel()
        while have < need:
            order = torch.randperm(len(self.docs), generator=self.generator).tolist()
            epoch = torch.cat([self.docs[i] for i in order])
            parts.append(epoch)
            have += epoch.numel()
            self.epochs += 1
        stream = torch.cat(parts)
        self.buffer = stream[need:]
        return stream[:need].view(batch_size, seq_len)


def _lr_factor(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate factor after ``step`` optimizer steps: linear warm-up, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain_world_lm(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seq_len: int,
    seed: int = 0,
    progress: bool = True,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    console=None,
) -> dict[str, Any]:
    """Build the tokenizer and model from ``texts``, train ``steps`` AdamW steps, save both to ``out_dir``.

    Each step trains on a ``(batch_size, seq_len)`` block of packed documents (`PackedStream`) with the
    mean next-token cross-entropy over all ``batch_size * (seq_len - 1)`` predictions. The learning rate rises
    linearly over ``warmup`` steps (default: 10 % of ``steps``, at most 100) and then follows a cosine to 10 %
    of ``lr``; gradients are clipped to norm 1. ``max_positions`` of the model is ``max(512, seq_len)``.

    Writes ``out_dir/{config.json, model.safetensors, generation_config.json, tokenizer.json, ...}`` and
    ``out_dir/train_log.json`` (``{"summary", "config", "log": [{"step", "loss", "lr"}, ...]}``).

    Returns:
        ``{"steps", "first_loss", "last_loss", "last_loss_mean", "seconds", "steps_per_s", "tokens_per_s",
        "params", "vocab_size", "corpus_tokens", "epochs", "out_dir"}``; ``first_loss`` / ``last_loss`` are the
        losses of the first and final step, ``last_loss_mean`` the mean over the final ``min(20, steps)``.
    """
    from rich.console import Console

    from groundscope.train.progress import step_progress

    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if value < 1 or (name == "seq_len" and value < 2):
            raise ValueError(f"{name} must be >= {2 if name == 'seq_len' else 1}, got {value}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("no texts to train on")
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    warmup = min(100, max(1, steps // 10)) if warmup is None else max(1, warmup)

    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_world_tokenizer(texts)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    docs = [[tokenizer.bos_token_id, *d, tokenizer.eos_token_id] for d in ids]
    stream = PackedStream(docs, seed)
    max_positions = max(512, seq_len)
    tokenizer.model_max_length = max_positions
    model = build_world_lm(tokenizer, hidden=hidden, layers=layers, heads=heads, max_positions=max_positions)
    model.train()
    params = sum(p.numel() for p in model.parameters())  # tied weights are counted once by .parameters()

    # Weight decay on matrices only (incl. the tied embedding); norms' gains are not shrunk towards zero.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))

    log: list[dict[str, float]] = []
    train_start = time.perf_counter()
    with step_progress("pretrain-lm", steps, console, progress) as update:
        for step in range(1, steps + 1):
            batch = stream.next_batch(batch_size, seq_len)  # (B, T)
            # labels == input_ids: the model shifts them itself (position t predicts token t + 1).
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            current_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            log.append({"step": step, "loss": round(loss.item(), 5), "lr": current_lr})
            update(step, f"loss {log[-1]['loss']:.4f}  lr {current_lr:.2e}")
    train_seconds = time.perf_counter() - train_start

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = [r["loss"] for r in log[-min(20, steps):]]
    summary = {
        "steps": steps,
        "first_loss": log[0]["loss"],
        "last_loss": log[-1]["loss"],
        "last_loss_mean": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
        "steps_per_s": steps / train_seconds,
        "tokens_per_s": steps * batch_size * seq_len / train_seconds,
        "params": params,
        "vocab_size": len(tokenizer),
        "corpus_tokens": sum(len(d) for d in docs),
        "epochs": steps * batch_size * seq_len / sum(len(d) for d in docs),
        "out_dir": str(out_dir),
    }
    config = {"steps": steps, "batch_size": batch_size, "lr": lr, "seq_len": seq_len, "seed": seed,
              "hidden": hidden, "layers": layers, "heads": heads, "warmup": warmup, "weight_decay": weight_decay,
              "texts": len(texts)}
    (out_dir / "train_log.json").write_text(
        json.dumps({"summary": summary, "config": config, "log": log}, indent=1) + "\n", encoding="utf-8")
    return summary


def generate_text(model, tokenizer, prompt: str = "", max_new_tokens: int = 200) -> str:
    """Greedy continuation of ``<s> prompt`` up to ``</s>``; returns prompt + continuation as plain text.

    The prompt is encoded as a ``(1, 1 + len(prompt tokens))`` id tensor beginning with ``<s>``, like every
    training document, so ``prompt=""`` asks for a whole sentence or caption of the model's choosing.
    """
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0], skip_special_tokens=True)
