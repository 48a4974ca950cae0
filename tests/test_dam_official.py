"""groundscope's DAM against the official implementation (NVlabs/describe-anything @ 153ad3d).

../shared/fixtures/dam_official_tiny holds a tiny random DAM saved by the official classes in the released layout
(no groundscope block in its config), inputs, and what the official code computes for them (its README gives the
files, tolerances and what to assert). `load_dam` must reproduce every tensor: the focal pixels, the visual tokens
(the context provider with its own 4 heads / MLP 48 under a 2-head / MLP 64 tower), the prompt ids, the
assembled embeddings, and greedy decoding with its scores.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import shared_fixture

FIXTURE = ("dam_official_tiny",)
VIDEO_IMAGES = "<image>" * 8


@pytest.fixture(scope="module")
def official():
    root = shared_fixture(*FIXTURE)
    from safetensors.torch import load_file

    inputs = np.load(root / "inputs.npz")
    return {"root": root, "expected": json.loads((root / "expected.json").read_text()),
            "tensors": load_file(root / "expected.safetensors"), "inputs": {k: inputs[k] for k in inputs.files}}


@pytest.fixture(scope="module")
def dam(official):
    from groundscope.describe import load_dam

    return load_dam(official["root"])


def _region(official, name):
    """(images, masks) of one fixture input as `focal_inputs` takes them (a video: lists of frames / masks)."""
    inp = official["inputs"]
    if name == "video":
        return [list(inp["video_frames"])], [list(inp["video_masks"])]
    return [inp[name]], [inp["mask" + name[-1]]]


def test_loading_gives_the_official_dimensions(dam, official):
    model = official["expected"]["model"]
    bb = dam.backbone
    # the context provider's own settings (context_provider/config.json), not the tower's 2 heads / MLP 64
    ctx = model["context_provider"]
    assert len(bb.adapters) == ctx["num_hidden_layers"] == 3
    for adapter in bb.adapters:
        assert adapter.cross_attn.heads == ctx["num_attention_heads"] == 4
        assert adapter.mlp.fc1.out_features == ctx["intermediate_size"] == 48
        assert adapter.attn_norm.eps == adapter.mlp_norm.eps == 1e-6
    assert bb.vision.config.num_attention_heads == 2 and bb.vision.config.intermediate_size == 64
    # the tower's mask embedding, select layer -2 with cls_patch (all 9 tokens), the 2x2-merging projector
    assert bb.mask_embed.in_channels == 1 and bb.mask_embed.out_channels == 32 and bb.patch_size == 14
    assert float(bb.mask_embed.weight.detach().abs().max()) > 0
    assert dam.config.feature_layer == -2 and dam.config.select_feature == "cls_patch" and bb.num_run == 2
    feats = bb(official["tensors"]["pixel_values.image1"].float())
    assert feats.shape == (1, 9, 32)
    assert dam.config.projector == "mlp_downsample" and dam.config.image_size == 42
    assert dam.config.num_frames == 8 and dam.config.pixel_dtype == "float16"
    assert dam.llm.get_input_embeddings().weight.shape == (580, 48)


@pytest.mark.parametrize("name", ["image1", "image2", "image3", "video"])
def test_preprocessing_reproduces_the_official_pixels(dam, official, name):
    from groundscope.describe.focal import focal_batch, focal_crop

    t = official["tensors"]
    cfg = dam.config
    images, masks = _region(official, name)
    raw, _ = focal_batch(images, masks, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.resample,
                         cfg.image_aspect_ratio, cfg.min_crop)
    torch.testing.assert_close(raw, t[f"pixel_values_fp32.{name}"], atol=1e-6, rtol=0)
    # what the model reads: rounded to float16 as get_image_tensor casts (bit for bit)
    pixels, frames = dam.focal_inputs(images, masks)
    assert frames == [8 if name == "video" else 1]
    assert torch.equal(pixels.half(), t[f"pixel_values.{name}"])
    assert torch.equal(pixels, t[f"pixel_values.{name}"].float())
    info = official["expected"]["video"]["frames"] if name == "video" else [official["expected"]["images"][name]]
    for mask, want in zip(masks[0] if name == "video" else masks, info):
        box = focal_crop(mask)
        x, y, w, h = box.region
        assert [box.x0, box.y0, box.x1, box.y1] == want["focal_crop_box_xyxy"]
        assert [x, y, x + w, y + h] == want["mask_box_xyxy"]


@pytest.mark.parametrize("name", ["image1", "image2", "image3", "video"])
def test_visual_tokens_match_the_official(dam, official, name):
    t = official["tensors"]
    with torch.no_grad():
        tokens = dam.visual_tokens(t[f"pixel_values.{name}"].float())
    torch.testing.assert_close(tokens, t[f"visual_tokens.{name}"], atol=1e-5, rtol=1e-5)
    # image3's crop is the whole image: the official code skips the context provider (cimage false)
    if name == "image3":
        with torch.no_grad():
            full = dam.projector(dam.backbone.features(t["pixel_values.image3"][:, :3].float(),
                                                       t["pixel_values.image3"][:, 3:4].float()))
        torch.testing.assert_close(tokens, full, atol=0, rtol=0)


def _prompts(dam):
    """Our user turns for the fixture's three prompts: DAM-3B's image prompt, DAM-3B-Video's (the registry's) on one
    image, and the video prompt with 8 frames."""
    from groundscope.models.registry import REGISTRY

    video_image = REGISTRY["dam-3b-video"].dam_config["prompt"]
    return {"dam3b_image": dam.user_message(1), "dam3b_video_image": dam.user_message(1, video_image),
            "dam3b_video_video": dam.user_message(8)}


def test_prompt_ids_are_the_officials(dam, official):
    prompts = official["expected"]["prompts"]
    for key, user in _prompts(dam).items():
        assert user == prompts[key]["query"]
        ids, _ = dam.encode(user)
        assert ids == prompts[key]["input_ids"] == official["tensors"][f"input_ids.{key}"][0].tolist()
    batch = dam.tokenize([1], None, _prompts(dam)["dam3b_video_image"])
    assert batch["input_ids"][0].tolist() == prompts["dam3b_video_image"]["input_ids"]


@pytest.mark.parametrize("key", ["dam3b_image", "dam3b_video_image", "dam3b_video_video"])
def test_embeddings_and_greedy_decoding_match_the_official(dam, official, key):
    t, gen = official["tensors"], official["expected"]["generation"][key]
    (name,) = gen["images"]
    images, masks = _region(official, name)
    with torch.no_grad():
        pixels, _ = dam.focal_inputs(images, masks)  # from the raw inputs, as get_description starts
        embeds, mask, _ = dam.embed(t[f"input_ids.{key}"], None, dam.visual_tokens(pixels))
    torch.testing.assert_close(embeds, t[f"inputs_embeds.{key}"], atol=1e-5, rtol=1e-5)
    for (a, b), k in zip(official["expected"]["prompts"][key]["inputs_embeds_visual_rows"], range(99)):
        torch.testing.assert_close(embeds[0, a:b], t[f"visual_tokens.{name}"][k], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        out = dam.llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, num_beams=1,
                               max_new_tokens=12, output_scores=True, return_dict_in_generate=True,
                               eos_token_id=dam.tokenizer.eos_token_id, pad_token_id=dam.tokenizer.eos_token_id)
    assert out.sequences[0].tolist() == gen["output_ids"]
    torch.testing.assert_close(torch.cat(out.scores), t[f"generation_scores.{key}"], atol=1e-4, rtol=0)
    # the whole chain (raw image + mask -> text) as DamModel.generate runs it, decoded as get_description does
    user = _prompts(dam)[key]
    assert dam.generate(images, masks, prompt=user, temperature=0, max_new_tokens=12) == [gen["text"]]


def test_save_keeps_the_context_providers_own_settings(dam, official, tmp_path):
    from groundscope.describe import load_dam

    dam.save(tmp_path / "again")
    cfg = json.loads((tmp_path / "again" / "context_provider" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["intermediate_size"], cfg["layer_norm_eps"]) == (4, 48, 1e-6)
    again = load_dam(tmp_path / "again")
    px = official["tensors"]["pixel_values.image2"].float()
    with torch.no_grad():
        torch.testing.assert_close(again.visual_tokens(px), dam.visual_tokens(px), atol=0, rtol=0)


def _copy(official, tmp_path):
    dst = tmp_path / "dam"
    shutil.copytree(official["root"], dst, ignore=shutil.ignore_patterns("expected*", "inputs.npz", "*.md"))
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_context_provider_layer_indices_as_the_official_builds_them(official, tmp_path):
    """Official CrossAttnContextProviderEndToAll filters enumerate()'s (i, i) tuples with the integer indices, so
    any indices build no layer, and the weights of a folder that has them do not load."""
    from groundscope.describe import DamError, load_dam

    root = _copy(official, tmp_path)
    path = root / "context_provider" / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "context_provider_layer_indices": [0, 1]}))
    with pytest.raises(DamError, match="parameter names do not match"):
        load_dam(root)
    path.write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(DamError, match="context provider has 1 layers"):
        load_dam(root)


def test_tokenizer_is_loaded_as_the_official_and_embeddings_resized(official, tmp_path):
    from groundscope.describe import load_dam

    root = _copy(official, tmp_path)
    tok_cfg = root / "llm" / "tokenizer_config.json"
    data = json.loads(tok_cfg.read_text())
    # a folder that asks for the legacy Llama tokenizer and left padding: official forces legacy=False, right
    tok_cfg.write_text(json.dumps({**data, "legacy": True, "padding_side": "left"}))
    tok = json.loads((root / "llm" / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": 580, "content": "<extra>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (root / "llm" / "tokenizer.json").write_text(json.dumps(tok))
    model = load_dam(root)
    assert model.tokenizer.legacy is False and model.tokenizer.padding_side == "right"
    # after a special token the legacy tokenizer prepends '▁' again: [1, 397, 2, 485] for these
    assert model.tokenizer("red</s>circle")["input_ids"] == [1, 397, 2, 277, 390, 452]
    # official model_utils.py ~91: resize_token_embeddings(len(tokenizer)); the old rows are kept
    assert len(model.tokenizer) == 581
    emb = model.llm.get_input_embeddings().weight
    assert emb.shape[0] == 581 and model.llm.get_output_embeddings().weight.shape[0] == 581
    from safetensors.torch import load_file

    kept = load_file(official["root"] / "llm" / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(emb[:580], kept)


def test_auto_dtype_on_a_gpu_is_the_released_weights(official, tmp_path, monkeypatch):
    from groundscope.describe import api

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert api._auto_dtype("auto", "cuda", official["root"]) == torch.float32  # model_dtype torch.float32
    root = _copy(official, tmp_path)
    top = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**top, "model_dtype": "torch.float16"}))
    assert api._auto_dtype("auto", "cuda", root) == torch.float16  # not bfloat16 (the old default)
    (root / "config.json").write_text(json.dumps({**top, "model_dtype": "torch.bfloat16"}))
    assert api._auto_dtype("auto", "cuda", root) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert api._auto_dtype("auto", "cuda", root) == torch.float16
    assert api._auto_dtype("auto", "cpu", root) == torch.float32


@pytest.mark.parametrize("name,key", [("dam-3b", "dam3b_image"), ("dam-3b-video", "dam3b_video_image")])
def test_each_checkpoint_gets_its_own_image_prompt(official, monkeypatch, name, key):
    """DAM-3B-Video on one image: "Image: <image>\\nGiven the image above, ..." (dam_server.py ~178-182,
    get_model_outputs.py query "joint"); DAM-3B: "<image>\\nDescribe the masked region in detail."."""
    import groundscope.models.hub as hub
    from groundscope.describe import load_describer

    monkeypatch.setattr(hub, "fetch", lambda source, *a, **k: str(official["root"]))
    for model_name in (name, hub.resolve(name, kind="describer")[0]):  # the registry name and its hub id
        describer = load_describer(model_name, device="cpu")
        assert describer.model.user_message(1) == official["expected"]["prompts"][key]["query"]
        inp = official["inputs"]
        out = describer.describe(inp["image1"], mask=inp["mask1"], temperature=0, max_new_tokens=12)
        assert out.text == official["expected"]["generation"][key]["text"]


def test_dlc_bench_preset_is_the_published_run(dam, official):
    from groundscope.describe import GENERATION_PRESETS, Describer

    assert GENERATION_PRESETS["dlc-bench"] == {"temperature": 0.2, "top_p": 1.0, "max_new_tokens": 512, "seed": 123}
    describer = Describer(dam)
    inp = official["inputs"]
    regions = [{"mask": inp["mask1"]}, {"mask": inp["mask1"]}]
    a = [r.text for r in describer.describe(inp["image1"], regions, preset="dlc-bench", max_new_tokens=8)]
    # seeded once before the first region (not per region), sampled at temperature 0.2 without top-p
    torch.manual_seed(123)
    b = dam.generate([inp["image1"]] * 2, [inp["mask1"]] * 2, temperature=0.2, top_p=1.0, max_new_tokens=8)
    assert a == b
    with pytest.raises(Exception, match="unknown generation preset"):
        describer.describe(inp["image1"], regions, preset="nope")


def test_describe_cli_preset_seeds_once_and_samples_as_the_published_run(official, dam, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from groundscope.cli import app
    from groundscope.describe import Describer

    inp = official["inputs"]
    Image.fromarray(inp["image1"]).save(tmp_path / "image.png")
    Image.fromarray(inp["mask1"]).save(tmp_path / "mask.png")
    args = ["describe", str(tmp_path / "image.png"), "-m", str(official["root"]), "--mask", str(tmp_path / "mask.png"),
            "--mask", str(tmp_path / "mask.png"), "--max-new-tokens", "8", "--device", "cpu", "--json"]
    runner = CliRunner()
    res = runner.invoke(app, args + ["--preset", "dlc-bench"])
    assert res.exit_code == 0, res.output
    texts = [r["text"] for r in json.loads(res.stdout.strip().splitlines()[-1])["regions"]]
    want = Describer(dam).describe(inp["image1"], [{"mask": inp["mask1"]}] * 2, temperature=0.2, top_p=1.0,
                                   seed=123, max_new_tokens=8)
    assert texts == [r.text for r in want]
    same = runner.invoke(app, args + ["--temperature", "0.2", "--top-p", "1", "--seed", "123"])
    assert [r["text"] for r in json.loads(same.stdout.strip().splitlines()[-1])["regions"]] == texts
    bad = runner.invoke(app, args + ["--preset", "nope"])
    assert bad.exit_code == 2 and "dlc-bench" in bad.output
