"""Faster inference for the published checkpoints: how the modules run changes, the model does not.

    deform_attn.py  multi-scale deformable attention as a sparse-dense product (instead of grid_sample)
    msda_cpp.py     the same sampling as a small C++ kernel compiled on first use (what load_detector uses)
    attention.py    the fusion layers' image-text attention with scaled_dot_product_attention; chunked FFN
    patch.py        apply_fast_path(model): installs them on a loaded model, in place
    precision.py    bf16 execution: bf16 weights for backbone, text tower, encoder and decoder layers, fp32 heads
    allocator.py    glibc's malloc tuned to reuse freed memory (large tensors stop page-faulting)

`groundscope.load_detector(name, precision="fp32" | "bf16")` applies them; benchmarks/results/speed_levers.md
has each lever's measured effect.
"""
