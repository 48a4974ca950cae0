"""Faster inference for the published checkpoints: how the modules run changes, the model does not.

    deform_attn.py  multi-scale deformable attention as a sparse-dense product (instead of grid_sample)
    attention.py    the fusion layers' image-text cross attention with scaled_dot_product_attention
    patch.py        apply_fast_path(model): installs both on a loaded model, in place
    precision.py    bf16 execution: bf16 weights for the heavy layers, fp32 where boxes are computed

`groundscope.load_detector(name, precision="fp32" | "bf16")` applies them; benchmarks/results/speed_levers.md
has each lever's measured effect.
"""
