"""Each CPU speed lever on its own, at Grounding-DINO-T size (issue 12): one module call timed, reference vs ours.

Sizes: d_model 256, 8 heads, 4 levels, 4 points (GroundingDinoConfig() defaults), an 800x1333 image -> levels
(100,167), (50,84), (25,42), (13,21) = 22223 image tokens, a 195-token prompt (the 80 COCO names), 900 queries,
Swin-T backbone. Random weights and inputs (they cost what trained ones do). Every figure is the fastest of
--repeats timed calls after one warm-up call, in seconds.

    python benchmarks/bench_speed_levers.py [--levers msda fusion deformable layer backbone decoder compile]
                                            [--threads 2] [--repeats 3]

Levers:
    msda        the deformable sampling core: transformers' grid_sample function vs our sparse-dense product
                (eager index arithmetic, and torch.compile'd), fp32 and bf16 values
    fusion      one fusion layer (image-text cross attention): reference vs SDPA, fp32 and bf16 weights
    deformable  one deformable layer (deformable self-attention + FFN): reference vs fast path, fp32 / bf16
    layer       one whole encoder layer: reference fp32, fast fp32, fast bf16 weights, fast fp32 under autocast
    backbone    Swin-T on the 800x1333 image: fp32, bf16 weights, autocast
    decoder     the 6-layer decoder (900 queries): fp32 reference, fast fp32, fast bf16
    compile     torch.compile of one (fast-path) encoder layer, fp32 and bf16: compile time and call time
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
TEXT_LEN = 195


def build_model():
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    swin = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, out_indices=[2, 3, 4])
    # The text tower is not measured here; a small one keeps the build quick.
    bert = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=bert, num_queries=900)
    torch.manual_seed(0)
    return GroundingDinoForObjectDetection(cfg).eval()


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def encoder_inputs(model, dtype=torch.float32):
    """Keyword arguments of one GroundingDinoEncoderLayer call at the real sizes."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in SHAPES)
    shapes = torch.tensor(SHAPES)
    valid = torch.ones((1, cfg.num_feature_levels, 2))
    ref = model.model.encoder.get_reference_points(SHAPES, valid, "cpu")
    pos = torch.arange(TEXT_LEN)[None] % 7
    return dict(
        vision_features=torch.randn((1, s, cfg.d_model), generator=g).to(dtype),
        vision_position_embedding=torch.randn((1, s, cfg.d_model), generator=g).to(dtype),
        spatial_shapes=shapes,
        spatial_shapes_list=SHAPES,
        level_start_index=torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]]),
        key_padding_mask=torch.zeros((1, s), dtype=torch.bool),
        reference_points=ref.to(dtype),
        text_features=torch.randn((1, TEXT_LEN, cfg.d_model), generator=g).to(dtype),
        text_attention_mask=torch.zeros((1, TEXT_LEN), dtype=torch.bool),
        text_position_embedding=None,
        text_self_attention_masks=~torch.eye(TEXT_LEN, dtype=torch.bool)[None],
        text_position_ids=pos,
    )


def fast_copy(module, dtype=torch.float32):
    """A copy with the fast path, as load_detector installs it: bf16 gets the C++ sampler, fp32 the sparse one."""
    from groundscope.models.fast.patch import apply_fast_path

    m = copy.deepcopy(module).to(dtype)
    apply_fast_path(m, kernel="cpp" if dtype == torch.bfloat16 else "sparse")
    return m


def lever_msda(model, repeats):
    from transformers.models.grounding_dino.modeling_grounding_dino import MultiScaleDeformableAttention

    from groundscope.models.fast import deform_attn

    from groundscope.models.fast import msda_cpp

    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn((1, s, 8, 32), generator=g)
    # As in the encoder: each query samples around its own pixel (the level grid), a few pixels away.
    grid = torch.cat([torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                                 indexing="ij")[::-1], -1).reshape(-1, 2) for h, w in SHAPES])
    loc = grid.view(1, s, 1, 1, 1, 2) + torch.randn((1, s, 8, 4, 4, 2), generator=g) * 0.01
    aw = torch.softmax(torch.randn((1, s, 8, 16), generator=g), -1).view(1, s, 8, 4, 4)
    shapes = torch.tensor(SHAPES)
    ref = MultiScaleDeformableAttention()
    rows = []
    for label, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        v, lo, a = value.to(dt), loc.to(dt), aw.to(dt)
        rows.append((f"msda reference (grid_sample), {label}", timed(lambda: ref(v, shapes, SHAPES, None, lo, a, 64), repeats)))
        deform_attn.compile_index_math(False)
        rows.append((f"msda sparse-dense, eager index math, {label}",
                     timed(lambda: deform_attn.multi_scale_deformable_attention(v, SHAPES, lo, a), repeats)))
        if deform_attn.compile_index_math(True):
            rows.append((f"msda sparse-dense, compiled index math, {label}",
                         timed(lambda: deform_attn.multi_scale_deformable_attention(v, SHAPES, lo, a), repeats)))
        deform_attn.compile_index_math(False)
        if msda_cpp.kernel() is not None:
            rows.append((f"msda C++ kernel, {label}",
                         timed(lambda: msda_cpp.multi_scale_deformable_attention(v, SHAPES, lo, a), repeats)))
    return rows


def lever_fusion(model, repeats):
    kwargs = encoder_inputs(model)
    layer = model.model.encoder.layers[0].fusion_layer
    rows = []
    for label, dt in (("fp32", torch.float32), ("bf16 weights", torch.bfloat16)):
        ref = copy.deepcopy(layer).to(dt)
        fast = fast_copy(layer, dt)
        args = (kwargs["vision_features"].to(dt), kwargs["text_features"].to(dt), kwargs["key_padding_mask"],
                kwargs["text_attention_mask"])
        rows.append((f"fusion layer reference, {label}", timed(lambda: ref(*args), repeats)))
        rows.append((f"fusion layer SDPA, {label}", timed(lambda: fast(*args), repeats)))
    return rows


def lever_deformable(model, repeats):
    kwargs = encoder_inputs(model)
    layer = model.model.encoder.layers[0].deformable_layer
    rows = []
    for label, dt in (("fp32", torch.float32), ("bf16 weights", torch.bfloat16)):
        ref = copy.deepcopy(layer).to(dt)
        fast = fast_copy(layer, dt)
        call = dict(hidden_states=kwargs["vision_features"].to(dt), attention_mask=~kwargs["key_padding_mask"],
                    position_embeddings=kwargs["vision_position_embedding"].to(dt),
                    reference_points=kwargs["reference_points"].to(dt), spatial_shapes=kwargs["spatial_shapes"],
                    spatial_shapes_list=SHAPES, level_start_index=kwargs["level_start_index"])
        rows.append((f"deformable layer reference, {label}", timed(lambda: ref(**call), repeats)))
        rows.append((f"deformable layer fast, {label}", timed(lambda: fast(**call), repeats)))
    return rows


def lever_layer(model, repeats):
    kwargs = encoder_inputs(model)
    layer = model.model.encoder.layers[0]
    bf = {k: (v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}
    ref, fast, fast_bf16 = copy.deepcopy(layer), fast_copy(layer), fast_copy(layer, torch.bfloat16)

    def autocast_call():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast(**kwargs)

    return [
        ("encoder layer reference, fp32", timed(lambda: ref(**kwargs), repeats)),
        ("encoder layer fast, fp32", timed(lambda: fast(**kwargs), repeats)),
        ("encoder layer fast, bf16 weights", timed(lambda: fast_bf16(**bf), repeats)),
        ("encoder layer fast, fp32 weights under bf16 autocast", timed(autocast_call, repeats)),
    ]


def lever_backbone(model, repeats):
    g = torch.Generator().manual_seed(0)
    px = torch.randn((1, 3, 800, 1333), generator=g)
    mask = torch.ones((1, 800, 1333), dtype=torch.long)
    backbone = model.model.backbone
    bf = copy.deepcopy(backbone).to(torch.bfloat16)
    fast, fast_bf = fast_copy(backbone), fast_copy(backbone, torch.bfloat16)  # chunked Swin MLPs

    def autocast_call():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            backbone(px, mask)

    return [
        ("Swin-T backbone 800x1333, fp32", timed(lambda: backbone(px, mask), repeats)),
        ("Swin-T backbone 800x1333, bf16 weights", timed(lambda: bf(px.bfloat16(), mask), repeats)),
        ("Swin-T backbone 800x1333, fp32 weights under bf16 autocast", timed(autocast_call, repeats)),
        ("Swin-T backbone, fast path (chunked MLPs), fp32", timed(lambda: fast(px, mask), repeats)),
        ("Swin-T backbone, fast path (chunked MLPs), bf16 weights", timed(lambda: fast_bf(px.bfloat16(), mask), repeats)),
    ]


def lever_decoder(model, repeats):
    from groundscope.models.fast.patch import apply_fast_path

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in SHAPES)
    shapes = torch.tensor(SHAPES)
    call = dict(
        inputs_embeds=torch.randn((1, 900, cfg.d_model), generator=g),
        vision_encoder_hidden_states=torch.randn((1, s, cfg.d_model), generator=g),
        vision_encoder_attention_mask=torch.ones((1, s), dtype=torch.bool),
        text_encoder_hidden_states=torch.randn((1, TEXT_LEN, cfg.d_model), generator=g),
        text_encoder_attention_mask=torch.zeros((1, TEXT_LEN), dtype=torch.bool),
        reference_points=torch.rand((1, 900, 4), generator=g) * 0.8 + 0.1,
        spatial_shapes=shapes, spatial_shapes_list=SHAPES,
        level_start_index=torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]]),
        valid_ratios=torch.ones((1, 4, 2)), return_dict=True,
    )
    ref = model.model.decoder
    fast = copy.deepcopy(ref)
    apply_fast_path(fast)
    fast.bbox_embed = ref.bbox_embed = model.bbox_embed
    bf = copy.deepcopy(fast).to(torch.bfloat16)
    bf_call = {k: (v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in call.items()}
    return [
        ("decoder (6 layers, 900 queries) reference, fp32", timed(lambda: ref(**call), repeats)),
        ("decoder fast, fp32", timed(lambda: fast(**call), repeats)),
        ("decoder fast, bf16 weights", timed(lambda: bf(**bf_call), repeats)),
    ]


def lever_compile(model, repeats):
    kwargs = encoder_inputs(model)
    layer = model.model.encoder.layers[0]
    bf = {k: (v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}
    rows = []
    for label, module, call in (("fp32", copy.deepcopy(layer), kwargs),
                                ("bf16 weights", copy.deepcopy(layer).to(torch.bfloat16), bf)):
        compiled = torch.compile(module, dynamic=False)
        t = time.perf_counter()
        compiled(**call)
        rows.append((f"torch.compile(encoder layer) {label}: compile (first call)", time.perf_counter() - t))
        rows.append((f"torch.compile(encoder layer) {label}: call", timed(lambda: compiled(**call), repeats)))
    return rows


LEVERS = {
    "msda": lever_msda, "fusion": lever_fusion, "deformable": lever_deformable, "layer": lever_layer,
    "backbone": lever_backbone, "decoder": lever_decoder, "compile": lever_compile,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levers", nargs="+", default=[k for k in LEVERS if k != "compile"], choices=list(LEVERS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model()
    print(f"{args.threads} thread(s), fastest of {args.repeats} calls, seconds", flush=True)
    with torch.inference_mode():
        for name in args.levers:
            for label, seconds in LEVERS[name](model, args.repeats):
                print(f"{label:<66}{seconds:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
