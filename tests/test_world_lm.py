"""The tiny world language model: texts from a synthetic world, the word-level tokenizer, pretraining, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from groundscope.cli import app
from groundscope.data.groundingcap import read_groundingcap
from groundscope.data.synth import generate_world
from groundscope.train.world_lm import (
    PackedStream,
    build_world_lm,
    build_world_tokenizer,
    generate_text,
    pretrain_world_lm,
    world_texts,
)

runner = CliRunner()
FOX = "The quick brown fox jumps over the lazy dog, 42 times."


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, n=3, seed=5, split="train")
    return out / "groundingcap.jsonl"


def test_world_texts_order_and_forms(world):
    images = read_groundingcap(world).images
    texts = world_texts(world)
    first = images[0]
    assert texts[0] == first.long_caption
    region = first.instances[0]
    assert texts[1] == region.phrase[0].upper() + region.phrase[1:] + "."  # "Small red circle."
    assert texts[2] == region.description
    assert len(texts) == sum(1 + 2 * len(im.instances) for im in images)


def test_tokenizer_round_trips_real_captions_with_single_digits(world):
    texts = world_texts(world)
    tok = build_world_tokenizer(texts)
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.bos_token_id not in ids and tok.eos_token_id not in ids
        assert tok.decode(ids) == text
    image = read_groundingcap(world).images[0]
    caption = texts[0]
    assert caption.startswith(f"A {image.width} by {image.height} image")
    tokens = tok.convert_ids_to_tokens(tok(caption, add_special_tokens=False)["input_ids"])
    width = str(image.width)
    assert tokens[:2 + len(width)] == ["▁A", "▁" + width[0], *width[1:], "▁by"]
    # Closed vocabulary for numbers: no token holds more than one digit.
    assert all(sum(c.isdigit() for c in t) <= 1 for t in tok.get_vocab())


def test_tokenizer_splits_punctuation_and_rejoins_without_spaces():
    text = "A 12 by 305 grid-lined image, left: top.\nNext."
    tok = build_world_tokenizer([text])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [
        "▁A", "▁1", "2", "▁by", "▁3", "0", "5", "▁grid", "-", "lined", "▁image", ",", "▁left", ":",
        "▁top", ".", "▁Next", "."]
    assert tok.decode(ids) == "A 12 by 305 grid-lined image, left: top. Next."  # newline collapsed to a space
    # "<s>" is matched as a special token and the first word gets its "▁" with or without a space after it.
    spaced, tight = (tok(t, add_special_tokens=False)["input_ids"] for t in ("<s> A 12", "<s>A 12"))
    assert spaced == tight == [tok.bos_token_id, *tok("A 12", add_special_tokens=False)["input_ids"]]
    assert tok.decode(tok("<s> A 12", add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "A 12"


def test_packed_stream_batches_cover_the_documents():
    docs = [[2, 10, 3], [2, 11, 12, 3], [2, 13, 3]]
    stream = PackedStream(docs, seed=0)
    batches = [stream.next_batch(2, 5) for _ in range(3)]  # 30 tokens: three passes over the 10-token corpus
    assert all(b.shape == (2, 5) and b.dtype == torch.long for b in batches)
    flat = torch.cat([b.flatten() for b in batches]).tolist()
    assert stream.epochs == 3
    for epoch in range(3):
        assert sorted(flat[epoch * 10:(epoch + 1) * 10]) == sorted(sum(docs, []))


def test_build_world_lm_ties_embeddings():
    tok = build_world_tokenizer(["A small red circle."])
    model = build_world_lm(tok, hidden=32, layers=1, heads=2, max_positions=64)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tok) and model.config.max_position_embeddings == 64
    logits = model(input_ids=torch.tensor([[2, 4, 5]])).logits
    assert logits.shape == (1, 3, len(tok))


def test_pretrain_memorises_and_saved_dir_loads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    names = [a + b for a in ("Ka", "Lo", "Mi", "Nu", "Po", "Ra", "Se")
             for b in ("ta", "ve", "zi", "do", "fu", "gi", "ho")]  # 49 made-up one-token names
    colours, shapes = ("red", "blue", "green", "cyan", "pink"), ("circle", "star", "heart", "cross", "square")
    texts = [f"{n} sees the {colours[i % 5]} {shapes[(i // 5) % 5]}." for i, n in enumerate(names[:45])]
    texts += [FOX] * 5  # one sentence the model must learn word for word in 60 steps
    out = tmp_path / "lm"
    summary = pretrain_world_lm(texts, out, steps=60, batch_size=8, lr=1e-2, seq_len=32, seed=0, progress=False,
                                hidden=32, layers=2, heads=2)
    assert summary["steps"] == 60 and summary["params"] > 0
    assert summary["last_loss"] < 0.5 * summary["first_loss"], summary
    log = json.loads((out / "train_log.json").read_text())
    assert [r["step"] for r in log["log"]] == list(range(1, 61))
    assert log["log"][0]["loss"] == summary["first_loss"]

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM)
    # transformers picks the tokenizer class from the model type; ours must keep the saved word-level pipeline.
    assert tok.decode(tok(FOX, add_special_tokens=False)["input_ids"]) == FOX
    assert tok(FOX)["input_ids"] == tok(FOX, add_special_tokens=False)["input_ids"]  # no post-processor
    assert generate_text(model, tok, "The quick", max_new_tokens=20) == FOX


def test_cli_pretrain_lm_writes_the_model_dir(world, tmp_path):
    out = tmp_path / "world_lm"
    args = ["pretrain-lm", "--data", str(world), "--out", str(out), "--steps", "3", "--batch-size", "2",
            "--seq-len", "16", "--hidden", "16", "--layers", "1", "--heads", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "train_log.json"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "train_log.json").read_text())["log"]) == 3
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already holds a model" in res.output
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    res = runner.invoke(app, ["pretrain-lm", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not found" in res.output
