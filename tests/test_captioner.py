"""LLMDet's caption head: sequence layout and losses, region indexing with denoising queries, stage freezing,
resume, the saved head, and that the detector beside it stays a plain detector."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from groundscope.data.synth import generate_world
from groundscope.models.captioner import (
    IGNORE_INDEX,
    CaptionerError,
    CaptionHeadConfig,
    build_caption_head,
    grid_boxes,
    load_caption_head,
    memory_levels,
)
from groundscope.train.config import config_from_dict
from groundscope.train.loop import Trainer
from groundscope.train.world_lm import build_world_lm, build_world_tokenizer, world_texts


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("capworld")
    generate_world(out, n=6, seed=5, split="train")
    return out


@pytest.fixture(scope="module")
def lm_dir(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    prompts = (CaptionHeadConfig(llm="-", d_model=1).image_prompt, CaptionHeadConfig(llm="-", d_model=1).region_prompt)
    tok = build_world_tokenizer(world_texts(world / "groundingcap.jsonl", prompts))
    build_world_lm(tok, hidden=32, layers=1, heads=2).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _config(det: Path, world: Path, lm: Path | None, out: Path, **caption) -> dict:
    cap = {"enabled": True, "grids": [3, 4], **({"llm": str(lm)} if lm else {}), **caption}
    return {
        "model": {"path": str(det), "freeze": ["model"], "device": "cpu"},
        "data": {"train": [{"path": str(world / "groundingcap.jsonl"), "mode": "detection"}],
                 "scales": [128], "max_size": 192, "flip_prob": 0.0},
        "optim": {"lr": 1e-3},
        "train": {"max_steps": 4, "batch_size": 2, "out_dir": str(out), "checkpoint_every": 2, "progress": False,
                  "denoising": {"enabled": True, "queries": 20}},
        "caption": cap,
    }


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.trainable.state_dict().items()}


# ---------------------------------------------------------------------------------------------- layout
def test_sequence_layout_and_loss_by_hand(lm_dir, world):
    head = build_caption_head(CaptionHeadConfig(llm=str(lm_dir), d_model=8, grids=[2, 3]))
    tok = head.tokenizer
    visual = torch.randn(2, 3, head.hidden)
    texts = world_texts(world / "groundingcap.jsonl", ("Describe.", "Name it."))
    answers = [texts[0].split("\n", 1)[1][:60].rsplit(" ", 1)[0], texts[1].split("\n", 1)[1]]  # caption, phrase
    embeds, mask, labels = head.build_inputs(visual, "Describe.", answers, max_tokens=80)
    lay = head.layout("Describe.")
    before, after = lay.before, lay.after
    assert lay.template == "plain" and before == [tok.bos_token_id]  # the world LM has no chat tokens or template
    # the visual tokens sit right after the prefix, unchanged
    assert torch.equal(embeds[:, len(before):len(before) + 3], visual)
    start = len(before) + 3 + len(after)
    for i, a in enumerate(answers):
        # the supervised tokens are the answer (tokenized as it follows the prompt) and EOS
        ids = [int(x) for x in labels[i][labels[i] != IGNORE_INDEX]]
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]).strip() == a
        assert labels[i, start:start + len(ids)].tolist() == ids
        assert (labels[i, :start] == IGNORE_INDEX).all() and (labels[i, start + len(ids):] == IGNORE_INDEX).all()
        assert mask[i].sum() == start + len(ids)
    # the loss is the mean cross-entropy of predicting each answer token from the position before it
    logits = head.lm(inputs_embeds=embeds, attention_mask=mask).logits
    terms = []
    for i in range(2):
        for t in range(1, labels.shape[1]):
            if labels[i, t] != IGNORE_INDEX:
                terms.append(-torch.log_softmax(logits[i, t - 1], -1)[labels[i, t]])
    expected = torch.stack(terms).mean()
    assert torch.allclose(head.lm_loss(visual, "Describe.", answers, 80), expected, atol=1e-5)
    # max_tokens bounds the whole sequence (LLMDet): prompt + 3 visual tokens + 3 answer tokens, the tail cut
    _, mask3, short = head.build_inputs(visual[:1], "Describe.", [answers[0]], max_tokens=start + 3)
    kept = short[0][short[0] != IGNORE_INDEX].tolist()
    assert short.shape[1] == start + 3 and mask3.sum() == start + 3
    assert len(kept) == 3 and kept == labels[0][start:start + 3].tolist() and kept[-1] != tok.eos_token_id


def test_image_tokens_crop_padding_and_resize():
    """Each level is cropped to the image's valid area before resizing: padding never reaches the LM."""
    d, shapes = 4, [(4, 6), (2, 3)]
    memory = torch.randn(1, 4 * 6 + 2 * 3, d)
    valid = torch.zeros(1, 30, dtype=torch.bool)
    v0 = torch.zeros(4, 6, dtype=torch.bool)
    v0[:3, :4] = True
    v1 = torch.zeros(2, 3, dtype=torch.bool)
    v1[:2, :2] = True
    valid[0] = torch.cat([v0.flatten(), v1.flatten()])
    maps = memory_levels(memory, valid, shapes)
    assert maps[0][0].shape == (d, 3, 4) and maps[0][1].shape == (d, 2, 2)
    assert torch.equal(maps[0][0], memory[0, :24].reshape(4, 6, d).permute(2, 0, 1)[:, :3, :4])
    boxes = grid_boxes(2, encoding="cxcywh")  # heads saved before LLMDet's xyxy (tests/test_caption_llmdet.py)
    assert torch.allclose(boxes, torch.tensor([[.25, .25, .5, .5], [.75, .25, .5, .5],
                                               [.25, .75, .5, .5], [.75, .75, .5, .5]]))


# ---------------------------------------------------------------------------------------------- training
def test_region_features_skip_denoising_queries(tiny_mm_dir, world, lm_dir, tmp_path):
    """The matched query's feature with denoising queries in front equals its feature without them."""
    from groundscope.train.caption_loss import select_regions
    from groundscope.train.denoising import build_denoising
    from groundscope.train.forward import forward_train

    trainer = Trainer(config_from_dict(_config(tiny_mm_dir, world, lm_dir, tmp_path / "run")))
    trainer.model.eval()
    batch = trainer._next_batch()
    dn = build_denoising(batch.targets, batch.prompts, int(trainer.model.config.num_queries), num_queries=20)
    assert dn[0].num_queries > 0
    with torch.no_grad():
        plain = forward_train(trainer.model, batch.pixel_values, batch.pixel_mask, batch.prompts)
        noisy = forward_train(trainer.model, batch.pixel_values, batch.pixel_mask, batch.prompts, dn[0])
    assert noisy.query_features.shape == plain.query_features.shape
    matches = trainer.criterion.match(plain.decoder[-1], batch.targets)
    sel = select_regions(matches, batch.phrases, 16)
    assert len(sel.phrases) == sum(len(t) for t in batch.targets) > 0
    torch.testing.assert_close(noisy.query_features[sel.image, sel.query], plain.query_features[sel.image, sel.query],
                               atol=1e-5, rtol=1e-5)
    # phrases are the cleaned class names of the matched boxes
    for b, t, text in zip(sel.image.tolist(), sel.target.tolist(), sel.phrases):
        raw = batch.phrases[b][t]
        assert text == raw[0].upper() + raw[1:].lower() + "."

    # region_index official (LLMDet's released training): row q of the last layer's [denoising; matching]
    # hidden states, read here off the decoder's own output
    from groundscope.train.caption_loss import region_features

    seen = []
    hook = trainer.model.model.decoder.register_forward_hook(lambda _m, _i, o: seen.append(o))
    with torch.no_grad():
        noisy = forward_train(trainer.model, batch.pixel_values, batch.pixel_mask, batch.prompts, dn[0])
    hook.remove()
    full = seen[-1].intermediate_hidden_states[:, -1]
    assert full.shape[1] == dn[0].num_queries + plain.query_features.shape[1]
    official = region_features(noisy, sel.image, sel.query, "official")
    torch.testing.assert_close(official, full[sel.image, sel.query])
    assert (sel.query < dn[0].num_queries).any()  # so some features are denoising queries'
    assert not torch.allclose(official, region_features(noisy, sel.image, sel.query, "matched"))


def test_stage1_trains_only_the_projectors_and_resumes_exactly(tiny_mm_dir, world, lm_dir, tmp_path):
    cfg = config_from_dict(_config(tiny_mm_dir, world, lm_dir, tmp_path / "full"))
    full = Trainer(cfg)
    before = _state(full)
    full.fit()
    after = _state(full)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("captioner.projector.", "captioner.region_projector.", "captioner.separator"))
                           for k in changed), sorted(changed)
    assert any(k.startswith("captioner.region_projector.") for k in changed)
    assert all("cap.image" in r and "cap.region" in r for r in full.history if r["type"] == "train")

    # 2 steps, stop, resume for the other 2: the same losses and the same head
    half = Trainer(config_from_dict(_config(tiny_mm_dir, world, lm_dir, tmp_path / "half")))
    half.fit(on_step=lambda tr, rec: tr.request_stop() if rec["step"] == 2 else None)
    resumed = Trainer(config_from_dict(_config(tiny_mm_dir, world, lm_dir, tmp_path / "half")))
    resumed.fit(resume=True)
    losses = lambda tr: [(r["cap.image"], r["cap.region"]) for r in tr.history if r["type"] == "train"]  # noqa: E731
    np.testing.assert_allclose(losses(resumed), losses(full), rtol=1e-5)
    for k, v in full.head.head_state_dict().items():
        torch.testing.assert_close(resumed.head.head_state_dict()[k], v)

    # the exported head loads and the detector beside it is untouched by it
    model_dir = tmp_path / "full" / "model"
    head = load_caption_head(model_dir / "caption_head")
    for k, v in full.head.head_state_dict().items():
        torch.testing.assert_close(head.head_state_dict()[k], v)
    assert (model_dir / "caption_head" / "lm" / "config.json").exists()  # a small LM travels with the head


def test_detector_with_head_detects_as_without(tiny_mm_dir, world, lm_dir, tmp_path):
    import groundscope as gs

    Trainer(config_from_dict(_config(tiny_mm_dir, world, lm_dir, tmp_path / "run"))).fit()
    with_head = tmp_path / "run" / "model"
    without = tmp_path / "plain"
    shutil.copytree(with_head, without, ignore=shutil.ignore_patterns("caption_head"))
    image = world / "images" / "000000.png"
    a = gs.load_detector(with_head).detect(image, ["red circle", "blue star"])
    b = gs.load_detector(without).detect(image, ["red circle", "blue star"])
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    np.testing.assert_array_equal(a.scores, b.scores)
    det = gs.load_detector(with_head)
    text = det.caption(image, max_new_tokens=5)
    phrases = det.caption(image, [[0, 0, 60, 60], [10, 20, 200, 120]], max_new_tokens=4)
    assert isinstance(text, str) and len(phrases) == 2
    with pytest.raises(CaptionerError, match="no caption head"):
        gs.load_detector(without).caption(image)


def test_stage2_lora_trains_adapters_detector_not_lm(tiny_mm_dir, world, lm_dir, tmp_path):
    pytest.importorskip("peft")
    Trainer(config_from_dict(_config(tiny_mm_dir, world, lm_dir, tmp_path / "s1"))).fit()
    stage1 = tmp_path / "s1" / "model"
    raw = _config(stage1, world, None, tmp_path / "s2", head=str(stage1 / "caption_head"),
                  lora={"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]})
    raw["model"]["freeze"] = ["model.backbone"]
    trainer = Trainer(config_from_dict(raw))
    before = _state(trainer)
    trainer.fit()
    after = _state(trainer)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert any("lora_" in k for k in changed)
    assert any(k.startswith("model.decoder.") for k in changed)
    assert not any(k.startswith("model.backbone.") for k in changed)
    assert not any(k.startswith("captioner.lm.") and "lora_" not in k for k in changed)
    head = load_caption_head(tmp_path / "s2" / "model" / "caption_head")
    assert head.config.lora["r"] == 4
    lora_now = {k: v for k, v in head.lm.state_dict().items() if "lora_" in k}
    trained = {k.removeprefix("captioner.lm."): v for k, v in after.items() if "lora_" in k}
    assert lora_now and all(torch.equal(v, trained[k]) for k, v in lora_now.items())


def test_config_errors_name_the_fix(tiny_mm_dir, world, tmp_path):
    from groundscope.train.config import ConfigError

    raw = _config(tiny_mm_dir, world, None, tmp_path / "x")
    with pytest.raises(ConfigError, match="caption.llm"):
        config_from_dict(raw)
    raw = _config(tiny_mm_dir, world, tmp_path / "nowhere", tmp_path / "x")
    with pytest.raises(CaptionerError, match="cannot load the caption LM"):
        Trainer(config_from_dict(raw))
    raw = _config(tiny_mm_dir, world, tmp_path, tmp_path / "x", levels=[2, 1, 0])
    with pytest.raises(ConfigError, match="caption.levels"):
        config_from_dict(raw)


def test_lm_of_a_llava_onevision_checkpoint(tmp_path):
    """LLMDet's LM is LLaVA-OneVision's Qwen2: its language model comes out as a plain causal LM, same logits."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    from groundscope.models.captioner import causal_lm_of_vlm

    torch.manual_seed(0)
    text = Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=64, vocab_size=100)
    vision = SiglipVisionConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                image_size=32, patch_size=8)
    full = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(text_config=text, vision_config=vision,
                                                                       image_token_index=99)).eval()
    full.save_pretrained(tmp_path)
    lm = causal_lm_of_vlm(str(tmp_path)).eval()
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, full(input_ids=ids).logits)
    assert not any("vision" in n for n, _ in lm.named_parameters())


def test_caption_word_check_needs_colour_then_shape():
    from groundscope.evaluate.captions import names_object, score_caption

    caption = ("A 593 by 524 image of three objects. In the top left there is a small red cross with a plain "
               "fill, left of the large dotted green circle. Below it there are two blue squares.")
    assert names_object(caption, "red", "cross")
    assert names_object(caption, "green", "circle")  # "large dotted" in between is fine
    assert names_object(caption, "blue", "square")  # plural
    assert not names_object(caption, "red", "circle")  # colour of one object, shape of another
    assert not names_object(caption, "green", "cross")
    score = score_caption(caption, ["red cross", "green circle", "cyan star", "red circle"])
    assert score.rate == 0.5


def test_trainer_with_region_cross_attention(tiny_mm_dir, world, lm_dir, tmp_path):
    """LLMDet's config (cross-attention blocks, official region index) trains the blocks and saves them."""
    raw = _config(tiny_mm_dir, world, lm_dir, tmp_path / "x", cross_attn_layers=6, region_index="official")
    raw["train"]["max_steps"] = 2
    trainer = Trainer(config_from_dict(raw))
    assert trainer.head.cross_attn is not None and trainer.head.config.region_index == "official"
    before = _state(trainer)
    trainer.fit()
    after = _state(trainer)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert any(k.startswith("captioner.cross_attn.layers.") for k in changed)
    assert any(k.startswith("captioner.cross_attn.ref_point_head.") for k in changed)
    head = load_caption_head(tmp_path / "x" / "model" / "caption_head")
    assert head.config.cross_attn_layers == 6 and head.cross_attn is not None
