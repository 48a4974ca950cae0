"""DAM's model on tiny random parts (SigLIP 24 px / patch 8 / width 32 / 3 layers, a 1-layer Llama with a word-level
tokenizer that adds BOS like Llama's): an untrained DAM is its base VLM on the crop, the released folder layout
round-trips, the loss covers the description tokens only, generation returns text, and the gates are wired in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from groundscope.describe import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    DamConfig,
    DamError,
    DamModel,
    Merge2x2,
    load_dam,
    region_to_mask,
)

H, W = 200, 300
ANSWERS = ["A small red circle.", "The blue square in the corner is striped."]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import processors

    from groundscope.train.world_lm import build_world_tokenizer

    cfg = DamConfig()
    texts = [f"{cfg.system} USER: {cfg.prompt} {cfg.video_prompt} ASSISTANT:".replace("<image>", "")] + ANSWERS
    tok = build_world_tokenizer(texts)
    # Llama's tokenizer puts BOS in front of every call; DAM's prompt tokenization relies on that.
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def build(tokenizer, seed: int = 0, **config) -> DamModel:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from groundscope.train.world_lm import build_world_lm

    torch.manual_seed(seed)
    vision = SiglipVisionModel(SiglipVisionConfig(image_size=24, patch_size=8, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=3, num_attention_heads=2))
    lm = build_world_lm(tokenizer, hidden=32, layers=1, heads=2)
    return DamModel.from_parts(DamConfig(image_size=24, max_new_tokens=6, **config), vision, lm, tokenizer).eval()


@pytest.fixture(scope="module")
def regions():
    """One image and two small regions whose focal crops are not the whole image."""
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    masks = [region_to_mask((H, W), box=(130, 80, 160, 110)), region_to_mask((H, W), points=[(60, 150), (70, 150)])]
    return image, masks


def _randomise_dam_parts(model: DamModel) -> None:
    """Non-zero mask embedding and gates, as a trained DAM has."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(model.backbone.mask_embed.parameters()) + list(model.backbone.adapters.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---------------------------------------------------------------------------------------------- (a) base VLM
def test_untrained_dam_equals_base_vlm_on_the_crop(tokenizer, regions):
    model = build(tokenizer)
    image, masks = regions
    pixels, frames = model.focal_inputs([image, image], masks)
    assert pixels.shape == (2, 8, 24, 24) and frames == [1, 1]
    crop = pixels[:, 4:7]
    with torch.no_grad():
        # the context (full image) really differs from the crop, so only the zero init makes them agree
        assert not torch.allclose(model.base_vlm_features(pixels[:, :3]), model.base_vlm_features(crop))
        assert (model.backbone(pixels) - model.base_vlm_features(crop)).abs().max() < 1e-6
        batch = model.tokenize(frames)
        dam = model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels).logits
        base = model(batch["input_ids"], batch["attention_mask"], visual_tokens=model.base_vlm_tokens(crop)).logits
    assert dam.shape == base.shape and (dam - base).abs().max() < 1e-6


def test_region_whose_crop_is_the_whole_image_gets_full_image_features(tokenizer):
    # The reference sends a region whose crop equals the full image through the plain (mask-embedded) pass.
    model = build(tokenizer)
    _randomise_dam_parts(model)
    image = np.random.default_rng(1).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    pixels, _ = model.focal_inputs([image], [region_to_mask((60, 60), box=(20, 20, 40, 40))])
    assert torch.equal(pixels[:, :4], pixels[:, 4:])
    with torch.no_grad():
        full = model.backbone.features(pixels[:, :3], pixels[:, 3:4])
        assert torch.equal(model.backbone(pixels), full)
        model.backbone.treat_image_as_cimage = True
        assert not torch.allclose(model.backbone(pixels), full)


# ---------------------------------------------------------------------------------------------- (b) layout
def test_save_load_round_trip_in_the_released_layout(tokenizer, regions, tmp_path):
    model = build(tokenizer, masked_cross_attn=True)
    _randomise_dam_parts(model)
    image, masks = regions
    pixels, frames = model.focal_inputs([image, image], masks)
    batch = model.tokenize(frames)
    with torch.no_grad():
        before = model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels).logits
    model.save(tmp_path / "dam")

    from safetensors.torch import load_file

    root = tmp_path / "dam"
    top = json.loads((root / "config.json").read_text())
    assert top["mm_vision_select_layer"] == -2 and top["mm_projector_cfg"]["mm_projector_type"] == "mlp_downsample"
    vision = load_file(root / "vision_tower" / "model.safetensors")
    assert "vision_model.embeddings.mask_patch_embedding.weight" in vision
    assert "vision_model.encoder.layers.2.self_attn.q_proj.weight" in vision
    ctx = load_file(root / "context_provider" / "model.safetensors")
    assert {f"context_provider_module.layers.{k}" for k in (
        "0.cross_attn.out_proj.weight", "2.attn_factor", "1.mlp.fc2.bias", "0.layer_norm2.weight")} <= set(ctx)
    assert ctx["context_provider_module.layers.0.mlp_factor"].shape == (1,)
    assert set(load_file(root / "mm_projector" / "model.safetensors")) == {
        "layers.1.weight", "layers.1.bias", "layers.2.weight", "layers.2.bias", "layers.4.weight", "layers.4.bias"}
    assert (root / "llm" / "config.json").is_file() and (root / "llm" / "tokenizer.json").is_file()

    # masked cross-attention: only context tokens whose patch holds mask pixels (all, when none does)
    full = -torch.ones(1, 1, 24, 24)
    full[..., :8, :8] = 1
    assert model.backbone._key_mask(full, 9).flatten().tolist() == [True] + [False] * 8
    assert model.backbone._key_mask(-torch.ones(1, 1, 24, 24), 9).all()

    loaded = load_dam(root)
    assert loaded.config.masked_cross_attn and loaded.config.image_size == 24
    assert loaded.config.projector == "mlp_downsample"
    batch2 = loaded.tokenize(frames)
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        after = loaded(batch2["input_ids"], batch2["attention_mask"], pixel_values=pixels).logits
    assert (after - before).abs().max() < 1e-6


def test_load_dam_names_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DamError, match=r"not a DAM folder: \['llm', 'vision_tower'"):
        load_dam(tmp_path)


# ---------------------------------------------------------------------------------------------- (c) loss
def test_prompt_layout_and_loss_on_description_tokens_only(tokenizer, regions):
    model = build(tokenizer)
    image, masks = regions
    pixels, frames = model.focal_inputs([image, image], masks)
    batch = model.tokenize(frames, ANSWERS)
    ids, labels = batch["input_ids"], batch["labels"]
    prompt_ids, _ = model.encode(model.user_message(1))
    n = len(prompt_ids)
    # BOS once at the start, one image placeholder, the vicuna_v1 text around it
    assert prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1
    assert prompt_ids.count(IMAGE_TOKEN_INDEX) == 1
    text = tokenizer.decode([i for i in prompt_ids if i >= 0], skip_special_tokens=True)
    assert text.startswith("A chat between") and "USER:" in text and text.endswith("detail. ASSISTANT:")
    for i, answer in enumerate(ANSWERS):
        assert ids[i, :n].tolist() == prompt_ids and (labels[i, :n] == IGNORE_INDEX).all()
        sup = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert sup[-1] == tokenizer.eos_token_id and tokenizer.decode(sup[:-1]).strip() == answer
        assert labels[i, n:n + len(sup)].tolist() == sup == ids[i, n:n + len(sup)].tolist()

    out = model(ids, batch["attention_mask"], pixel_values=pixels, labels=labels)
    v = model.visual_tokens(pixels).shape[1]
    assert v == 4  # 3x3 patches, padded to 4x4, merged 2x2
    assert out.labels.shape[1] == ids.shape[1] - 1 + v
    # by hand: next-token cross-entropy over the supervised positions of both rows, visual tokens unsupervised
    target = out.labels[:, 1:]
    keep = target != IGNORE_INDEX
    manual = F.cross_entropy(out.logits[:, :-1][keep], target[keep])
    assert keep.sum() == (labels != IGNORE_INDEX).sum()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # the placeholder became v unsupervised visual positions; everything else keeps its label
    p = prompt_ids.index(IMAGE_TOKEN_INDEX)
    for i in range(2):
        expected = torch.cat([labels[i, :p], torch.full((v,), IGNORE_INDEX), labels[i, p + 1:]])
        assert torch.equal(out.labels[i], expected)


def test_video_prompt_and_placeholder_checks(tokenizer, regions):
    model = build(tokenizer)
    ids, _ = model.encode(model.user_message(3))
    assert ids.count(IMAGE_TOKEN_INDEX) == 3 and ids.count(tokenizer.bos_token_id) == 1
    with pytest.raises(DamError, match="2 '<image>' but the region has 1"):
        model.user_message(1, "<image><image> Describe.")
    image, masks = regions
    pixels, frames = model.focal_inputs([image], masks[:1])
    batch = model.tokenize([2])
    with pytest.raises(DamError, match="2 image placeholders but 1 frames"):
        model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels)
    with pytest.raises(DamError, match=r"\(B, 8, S, S\)"):
        model.backbone(pixels[:, :4])


def test_merge_2x2_order_by_hand():
    x = torch.arange(9, dtype=torch.float32).reshape(1, 9, 1)  # token r * 3 + c of a 3x3 grid, padded to 4x4
    out = Merge2x2()(x)[0].tolist()
    # column pair j major, row pair i minor; each [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)]
    assert out == [[0, 1, 3, 4], [6, 7, 0, 0], [2, 0, 5, 0], [8, 0, 0, 0]]


# ---------------------------------------------------------------------------------------------- (d) generate
def test_generate_returns_text_for_a_batch_and_a_video(tokenizer, regions):
    model = build(tokenizer)
    image, masks = regions
    texts = model.generate([image, image], masks, temperature=0)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # greedy's first token is the argmax after the prompt, through the same embedding path as forward
    pixels, frames = model.focal_inputs([image], masks[:1])
    batch = model.tokenize(frames)
    with torch.no_grad():
        first = int(model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels).logits[0, -1].argmax())
    assert model.generate([image], masks[:1], temperature=0, max_new_tokens=1)[0] == \
        tokenizer.decode([first], skip_special_tokens=True).strip()
    video = model.generate([[image, image[:, ::-1].copy()]], [[masks[0], masks[1][:, ::-1].copy()]], max_new_tokens=3)
    assert len(video) == 1 and isinstance(video[0], str)  # sampled with the default temperature 0.2, top_p 0.5


# ---------------------------------------------------------------------------------------------- (e) gates
@pytest.mark.parametrize("gate", ["raw", "tanh"])
def test_one_step_on_the_gates_changes_the_features(tokenizer, regions, gate):
    model = build(tokenizer, gate=gate)
    image, masks = regions
    pixels, frames = model.focal_inputs([image, image], masks)
    batch = model.tokenize(frames, ANSWERS)
    with torch.no_grad():
        before = model.visual_tokens(pixels)
    gates = [p for a in model.backbone.adapters for p in (a.attn_gate, a.mlp_gate)]
    opt = torch.optim.Adam(gates, lr=0.1)
    model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels, labels=batch["labels"]).loss.backward()
    # feature layer -2 runs layers 0 and 1 of 3: the last adapter is never on the path
    assert all(p.grad is not None and p.grad.abs().item() > 0 for p in gates[:4])
    assert gates[4].grad is None and gates[5].grad is None
    opt.step()
    with torch.no_grad():
        after = model.visual_tokens(pixels)
    assert (after - before).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------- other encoders, VILA
def test_backbone_wraps_a_clip_vision_model():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from groundscope.describe import LocalizedVisionBackbone

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=24, patch_size=8, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=3, num_attention_heads=2))
    pixels = torch.randn(2, 8, 24, 24)
    for select, tokens in (("patch", 9), ("cls_patch", 10)):  # CLIP has a CLS token
        backbone = LocalizedVisionBackbone(clip, select_feature=select).eval()
        with torch.no_grad():
            out = backbone(pixels)
            assert out.shape == (2, tokens, 32)
            assert (out - backbone.base_features(pixels[:, 4:7])).abs().max() < 1e-6


def test_base_vlm_folder_loads_with_zero_dam_parts(tokenizer, tmp_path):
    import shutil

    build(tokenizer).save(tmp_path / "vlm")
    shutil.rmtree(tmp_path / "vlm" / "context_provider")
    with pytest.raises(DamError, match="context_provider"):
        load_dam(tmp_path / "vlm")
    model = load_dam(tmp_path / "vlm", from_base_vlm=True)
    assert all(a.attn_gate.item() == 0 and a.mlp_gate.item() == 0 for a in model.backbone.adapters)
