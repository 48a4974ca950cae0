"""The CPU fast path (groundscope.models.fast): the same numbers as transformers' modules in fp32, close ones in
bf16, nothing changed for training, export or the checkpoint."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import groundscope as gs
from groundscope.detections import box_iou
from groundscope.models.fast.deform_attn import FastMultiScaleDeformableAttention, multi_scale_deformable_attention
from groundscope.models.fast.patch import apply_fast_path, remove_fast_path


def _msda_inputs(batch, shapes, heads, dim, points, queries, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn((batch, s, heads, dim), generator=g)
    # Some locations outside [0, 1]: grid_sample's zero padding must be reproduced at every border.
    loc = torch.rand((batch, queries, heads, len(shapes), points, 2), generator=g) * 1.4 - 0.2
    weights = torch.softmax(torch.randn((batch, queries, heads, len(shapes) * points), generator=g), -1)
    return value, loc, weights.view(batch, queries, heads, len(shapes), points)


@pytest.mark.parametrize("batch, shapes, heads, dim, points, queries", [
    (1, [(100, 167), (50, 84), (25, 42), (13, 21)], 8, 32, 4, 3000),  # Grounding-DINO-T's levels at 800x1333
    (2, [(7, 9), (4, 5)], 2, 16, 3, 50),
    (3, [(13, 1), (1, 1), (5, 8)], 4, 8, 2, 17),  # one-pixel-wide and one-pixel levels
    (1, [(6, 6)], 1, 4, 1, 200),
])
def test_deformable_attention_equals_transformers_function(batch, shapes, heads, dim, points, queries):
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    value, loc, weights = _msda_inputs(batch, shapes, heads, dim, points, queries)
    with torch.no_grad():
        ref = MultiScaleDeformableAttention()(value, torch.tensor(shapes), shapes, None, loc, weights, 64)
        ours = multi_scale_deformable_attention(value, shapes, loc, weights)
    assert ours.shape == ref.shape == (batch, queries, heads * dim)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_compiled_kernel_equals_transformers_function():
    """The C++ sampler the bf16 path uses (compiled on first use; skipped where no compiler is found)."""
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    from groundscope.models.fast import msda_cpp

    if msda_cpp.kernel() is None:
        pytest.skip("no C++ toolchain to build the deformable-attention kernel")
    for batch, shapes, heads, dim, points, queries in [(2, [(7, 9), (4, 5), (1, 1)], 2, 16, 3, 60),
                                                       (1, [(50, 84), (25, 42), (13, 21), (7, 11)], 8, 32, 4, 500)]:
        value, loc, weights = _msda_inputs(batch, shapes, heads, dim, points, queries, seed=5)
        with torch.no_grad():
            ref = MultiScaleDeformableAttention()(value, torch.tensor(shapes), shapes, None, loc, weights, 64)
            ours = msda_cpp.multi_scale_deformable_attention(value, shapes, loc, weights)
            half = msda_cpp.multi_scale_deformable_attention(value.bfloat16(), shapes, loc, weights)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("where", ["encoder", "decoder"])
def test_fused_deformable_module_equals_transformers_module(tiny_mm_dir, where):
    """The bf16 path's deformable module (softmax + locations + sampling in the kernel), run in fp32 here: the
    same output as transformers' module, for the encoder's points and the decoder's boxes, with padding."""
    from groundscope.models.fast import msda_cpp

    if msda_cpp.kernel() is None:
        pytest.skip("no C++ toolchain to build the deformable-attention kernel")
    det = gs.load_detector(tiny_mm_dir, fast=False)
    ref = (det.model.model.encoder.layers[0].deformable_layer.self_attn if where == "encoder"
           else det.model.model.decoder.layers[0].encoder_attn)
    fast = copy.deepcopy(ref)
    apply_fast_path(fast, kernel="cpp")
    assert type(fast).__name__.startswith("Fast")
    shapes = [(13, 17), (7, 9), (4, 5), (2, 3)]
    s = sum(h * w for h, w in shapes)
    d = det.model.config.d_model
    g = torch.Generator().manual_seed(0)
    q = s if where == "encoder" else 30
    valid = torch.ones((1, s), dtype=torch.bool)
    valid[0, -5:] = False
    kw = dict(attention_mask=valid, encoder_hidden_states=torch.randn((1, s, d), generator=g),
              position_embeddings=torch.randn((1, q, d), generator=g),
              reference_points=torch.rand((1, q, 4, 2 if where == "encoder" else 4), generator=g) * 0.8 + 0.1,
              spatial_shapes=torch.tensor(shapes), spatial_shapes_list=shapes, level_start_index=None)
    hidden = torch.randn((1, q, d), generator=g)
    with torch.no_grad():
        expected, _ = ref(hidden, **kw)
        got, _ = fast(hidden, **kw)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_deformable_attention_exact_sample_points():
    """Samples on pixel centres and far outside the image: plain reads and zeros."""
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    shapes = [(4, 6)]
    value = torch.arange(24, dtype=torch.float32).view(1, 24, 1, 1)
    centre = torch.tensor([[(2 + 0.5) / 6, (1 + 0.5) / 4], [-3.0, 0.5], [0.5, 7.0]])  # pixel (y=1, x=2); outside
    loc = centre.view(1, 3, 1, 1, 1, 2)
    w = torch.ones((1, 3, 1, 1, 1))
    ours = multi_scale_deformable_attention(value, shapes, loc, w)
    ref = MultiScaleDeformableAttention()(value, torch.tensor(shapes), shapes, None, loc, w, 64)
    torch.testing.assert_close(ours.flatten(), torch.tensor([8.0, 0.0, 0.0]))
    torch.testing.assert_close(ours, ref)


def test_deformable_attention_bf16_values_and_shape_errors():
    shapes = [(9, 11), (5, 6)]
    value, loc, weights = _msda_inputs(1, shapes, 2, 8, 2, 40)
    full = multi_scale_deformable_attention(value, shapes, loc, weights)
    half = multi_scale_deformable_attention(value.bfloat16(), shapes, loc, weights)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="spatial_shapes_list"):
        multi_scale_deformable_attention(value, [(9, 11)], loc, weights)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_ffn_with_the_activation_fused_into_fc1_equals_the_unfused(activation):
    """bf16 on the CPU: fc1 + activation in one oneDNN call (`_fused_fc1`) gives what fc1 then the activation
    give; fp32 keeps the reference's kernels."""
    from transformers.activations import ACT2FN

    from groundscope.models.fast import attention

    torch.manual_seed(0)
    act = ACT2FN[activation]
    fc1, fc2 = torch.nn.Linear(64, 256).bfloat16(), torch.nn.Linear(256, 64).bfloat16()
    x = torch.randn(1, 300, 64).bfloat16()
    with torch.inference_mode():
        fused = attention._fused_fc1(x, fc1, act)
        if fused is None:
            pytest.skip("this torch build has no oneDNN linear with fused activations")
        plain = act(fc1(x))
        assert fused.dtype == torch.bfloat16 and fused.shape == plain.shape
        # One bf16 rounding apart at most (the fused call rounds once, after the activation).
        torch.testing.assert_close(fused.float(), plain.float(), rtol=1e-2, atol=2e-2)
        out = attention.chunked_ffn(x, fc1, act, fc2)
        torch.testing.assert_close(out.float(), fc2(plain).float(), rtol=2e-2, atol=2e-2)
        assert attention._fused_fc1(x.float(), fc1.float(), act) is None


def test_fusion_attention_sdpa_equals_reference_with_padding(tiny_model_dir):
    det = gs.load_detector(tiny_model_dir, fast=False)
    layer = det.model.model.encoder.layers[0].fusion_layer
    fast = copy.deepcopy(layer)
    assert apply_fast_path(fast)["fusion_attention"] == 1
    g = torch.Generator().manual_seed(1)
    d = det.model.config.d_model
    vision, text = torch.randn((2, 300, d), generator=g), torch.randn((2, 12, d), generator=g)
    vision_pad = torch.zeros((2, 300), dtype=torch.bool)
    vision_pad[1, 250:] = True
    text_pad = torch.zeros((2, 12), dtype=torch.bool)
    text_pad[0, 7:] = True
    with torch.no_grad():
        (rv, _), (rt, _) = layer(vision, text, vision_pad, text_pad)
        (fv, _), (ft, _) = fast(vision, text, vision_pad, text_pad)
    torch.testing.assert_close(fv, rv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ft[0, :7], rt[0, :7], atol=1e-5, rtol=1e-5)  # padded text rows are never read
    torch.testing.assert_close(ft[1], rt[1], atol=1e-5, rtol=1e-5)


def test_patched_model_detects_like_the_unpatched(tiny_model_dir, example_photo):
    classes = ["cat", "remote control", "couch", "bed"]
    plain = gs.load_detector(tiny_model_dir, fast=False)
    fast = gs.load_detector(tiny_model_dir)
    assert apply_fast_path(fast.model) == {"deformable_attention": 3, "fusion_attention": 1, "deformable_layer": 1, "backbone_mlp": 4}  # idempotent
    a = plain.detect(example_photo, classes, max_detections=50)
    b = fast.detect(example_photo, classes, max_detections=50)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    np.testing.assert_allclose(b.xyxy, a.xyxy, atol=1e-3)
    assert b.labels == a.labels
    g_a = plain.ground(example_photo, "a cat on a couch", ["a cat", "a couch"], max_detections=10)
    g_b = fast.ground(example_photo, "a cat on a couch", ["a cat", "a couch"], max_detections=10)
    np.testing.assert_allclose(g_b.scores, g_a.scores, atol=1e-4)


def test_patching_keeps_checkpoint_training_and_pickling(tiny_mm_dir, tmp_path):
    det = gs.load_detector(tiny_mm_dir)
    plain = gs.load_detector(tiny_mm_dir, fast=False)
    assert det.model.state_dict().keys() == plain.model.state_dict().keys()
    det.model.save_pretrained(tmp_path / "saved")
    reloaded = gs.load_detector(tmp_path / "saved", fast=False)
    for (k, v), (_, w) in zip(plain.model.state_dict().items(), reloaded.model.state_dict().items()):
        assert torch.equal(v, w), k
    # (transformers' top-level models carry unpicklable hooks of their own; a layer pickles.)
    clone = pickle.loads(pickle.dumps(det.model.model.encoder.layers[0]))
    assert type(clone.fusion_layer.attn).__name__ == "FastMMGroundingDinoBiMultiHeadAttention"
    assert isinstance(clone.deformable_layer.self_attn.attn, FastMultiScaleDeformableAttention)
    assert type(copy.deepcopy(det.model).model.encoder.layers[0].fusion_layer.attn) is type(clone.fusion_layer.attn)
    # Training mode with autograd runs transformers' code: identical outputs and gradients to the unpatched model.
    layer_fast = det.model.model.encoder.layers[0].deformable_layer.train()
    layer_ref = plain.model.model.encoder.layers[0].deformable_layer.train()
    assert isinstance(layer_fast.self_attn.attn, FastMultiScaleDeformableAttention)
    shapes = [(6, 7), (3, 4), (2, 2), (1, 1)]  # the tiny model's 4 levels
    s = sum(h * w for h, w in shapes)
    d = det.model.config.d_model
    x = torch.randn((1, s, d), requires_grad=True)
    kw = dict(attention_mask=torch.ones((1, s), dtype=torch.bool), position_embeddings=torch.zeros((1, s, d)),
              reference_points=torch.rand((1, s, 4, 2)), spatial_shapes=torch.tensor(shapes),
              spatial_shapes_list=shapes, level_start_index=torch.tensor([0, 42, 54, 58]))
    torch.manual_seed(0)
    out_fast, _ = layer_fast(x, **kw)
    out_fast.sum().backward()
    grad_fast = x.grad.clone()
    x.grad = None
    torch.manual_seed(0)
    out_ref, _ = layer_ref(x, **kw)
    out_ref.sum().backward()
    torch.testing.assert_close(out_fast, out_ref)
    torch.testing.assert_close(grad_fast, x.grad)
    remove_fast_path(det.model)
    assert not any(isinstance(m, FastMultiScaleDeformableAttention) for m in det.model.modules())


def test_bf16_keeps_heads_fp32_and_detections_close_on_nano():
    """nano is a trained model (the synthetic world), so its scores are not the near-ties of random weights."""
    from groundscope.models.hub import BUNDLED_DIR

    if not (BUNDLED_DIR / "nano" / "config.json").exists():
        pytest.skip("the bundled nano model is not in this installation")
    image = "examples/synth_shapes.png"
    classes = ["pink cross", "cyan star", "blue diamond", "yellow diamond", "red circle", "green heart"]  # make demo
    ref = gs.load_detector("nano").detect(image, classes, max_detections=30)
    det = gs.load_detector("nano", precision="bf16")
    m = det.model
    assert m.model.encoder.layers[0].deformable_layer.fc1.weight.dtype == torch.bfloat16
    assert next(m.model.backbone.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in m.bbox_embed.parameters())
    assert all(p.dtype == torch.float32 for p in m.model.enc_output.parameters())
    out = det.detect(image, classes, max_detections=30)
    assert out.scores.dtype == np.float32 and out.xyxy.dtype == np.float32
    # Each of the reference's top 20 has a bf16 twin: same class, IoU >= 0.85, score within 0.1. The tolerance is
    # what this model shows: on the nano re-bundled after its second training stage, bf16 moves some scores by up
    # to 0.09 (0.319 -> 0.228 for a demo object) and reproduces 77% of fp32's top-100 at the strict rule
    # (IoU >= 0.9, score within 0.02; `benchmarks/bench_detect.py` prints it), against 92% on the first nano.
    iou = box_iou(ref.xyxy[:20], out.xyxy)
    found = [((out.class_ids == ref.class_ids[i]) & (iou[i] >= 0.85) & (np.abs(out.scores - ref.scores[i]) <= 0.1)).any()
             for i in range(20)]
    assert np.mean(found) >= 0.9, found


def test_precision_argument_errors(tiny_mm_dir):
    with pytest.raises(ValueError, match="fp32, bf16"):
        gs.load_detector(tiny_mm_dir, precision="fp16")
    with pytest.raises(ValueError, match="not both"):
        gs.load_detector(tiny_mm_dir, dtype=torch.bfloat16, precision="bf16")


def test_cli_precision_bf16(tiny_mm_dir, example_photo, tmp_path):
    from groundscope.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["detect", str(example_photo), "--classes", "cat,couch", "--model", str(tiny_mm_dir),
                              "--precision", "bf16", "--box-threshold", "0", "-k", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / f"{example_photo.stem}.json").read_text())
    assert len(rec["detections"]) == 5 and rec["detections"][0]["label"] in ("cat", "couch")
    res = runner.invoke(app, ["refer", str(example_photo), "--expression", "the cat", "--model", str(tiny_mm_dir),
                              "--precision", "bf16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["detect", str(example_photo), "--classes", "cat", "--model", str(tiny_mm_dir),
                              "--precision", "fp16", "--out", str(out)])
    assert res.exit_code == 2 and "fp32, bf16" in res.output
