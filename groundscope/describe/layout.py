"""The released DAM folder layout (``llm/``, ``vision_tower/``, ``mm_projector/``, ``context_provider/``,
``config.json``), shared by `DamModel.save` (writes it) and `load_dam` (reads it, without trust_remote_code):
the reference's parameter names mapped onto ours, its config fields read into a `DamConfig`, and the weights of
a part folder read and checked. Naming (reference -> ours):

    vision_tower   vision_model.embeddings.mask_patch_embedding.*  -> backbone.mask_embed.*
                   vision_model.<rest>                               -> backbone.vision.<rest>
    mm_projector   layers.<i>.*                                      -> projector.layers.<i>.*
    context_provider  context_provider_module.layers.<i>.layer_norm1 -> backbone.adapters.<i>.attn_norm
                   ... .cross_attn.{q,k,v,out}_proj -> .cross_attn.{q,k,v,o};  .attn_factor -> .attn_gate
                   ... .layer_norm2 -> .mlp_norm;  .mlp.fc{1,2} -> .mlp.fc{1,2};  .mlp_factor -> .mlp_gate
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from groundscope.describe.backbone import CONTEXT_KEYS
from groundscope.describe.config import DamConfig, DamError

DAM_DIRS = ("llm", "vision_tower", "mm_projector", "context_provider")
_ADAPTER_NAMES = [  # reference suffix -> ours, inside layer <i>
    ("layer_norm1.", "attn_norm."), ("layer_norm2.", "mlp_norm."), ("cross_attn.q_proj.", "cross_attn.q."),
    ("cross_attn.k_proj.", "cross_attn.k."), ("cross_attn.v_proj.", "cross_attn.v."),
    ("cross_attn.out_proj.", "cross_attn.o."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("attn_factor", "attn_gate"), ("mlp_factor", "mlp_gate")]
_RESAMPLE_IDS = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def _rename(state: dict, table: list[tuple[str, str]], reverse: bool = False) -> dict:
    """Rename ``<i>.<suffix>`` keys by `table` (reference -> ours; ours -> reference with `reverse`)."""
    out = {}
    for key, value in state.items():
        layer, _, rest = key.partition(".")
        for ref, ours in table:
            src, dst = (ours, ref) if reverse else (ref, ours)
            if rest.startswith(src):
                out[f"{layer}.{dst}{rest[len(src):]}"] = value
                break
        else:
            raise DamError(f"unknown context-provider parameter {key!r}")
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a saved module folder (model.safetensors, or shards listed in its index)."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(folder / shard))
        return state
    raise DamError(f"no weights in {folder}: expected model.safetensors or model.safetensors.index.json")


def _load_strict(module: nn.Module, state: dict, what: str, optional: tuple[str, ...] = ()) -> None:
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(optional))
    if unexpected or missing:
        raise DamError(f"{what}: parameter names do not match (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                       "is this a DAM / VILA folder with the same architecture?")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise DamError(f"{what}: {e}") from e


def _config_from_folder(root: Path, top: dict) -> DamConfig:
    """Our saved DamConfig (if any), overridden by the reference's own fields, which decide the shapes."""
    read = lambda *p: json.loads(root.joinpath(*p).read_text()) if root.joinpath(*p).is_file() else {}  # noqa: E731
    known = {f.name for f in fields(DamConfig)}
    values = {k: v for k, v in (top.get("groundscope_dam") or {}).items() if k in known}
    values["image_size"] = read("vision_tower", "config.json").get("image_size", values.get("image_size", 384))
    pre = read("vision_tower", "preprocessor_config.json")
    values["image_size"] = int((pre.get("size") or {}).get("height", values["image_size"]))
    values.update({k: list(pre[k]) for k in ("image_mean", "image_std") if k in pre})
    values["resample"] = {v: k for k, v in _RESAMPLE_IDS.items()}.get(pre.get("resample"), values.get("resample"))
    for ours, ref in (("feature_layer", "mm_vision_select_layer"), ("select_feature", "mm_vision_select_feature"),
                      ("image_aspect_ratio", "image_aspect_ratio"), ("num_frames", "num_video_frames")):
        if top.get(ref) is not None:
            values[ours] = top[ref]
    values["projector"] = read("mm_projector", "config.json").get("mm_projector_type", values.get("projector"))
    ctx = read("context_provider", "config.json")
    if ctx and (ctx.get("context_image_as_queries") or ctx.get("context_provider_type") != "cross_attn_end_to_all"):
        raise DamError(f"{root}/context_provider: only the 'cross_attn_end_to_all' context provider with crop "
                       "queries is supported (DAM-3B's)")
    if ctx:
        values["context_provider"] = {k: ctx[k] for k in CONTEXT_KEYS if k in ctx}
    # Released folders round pixels to float16 as the official code does; our saved configs say what they used.
    values["pixel_dtype"] = (top.get("groundscope_dam") or {}).get("pixel_dtype",
                                                                   "float32" if "groundscope_dam" in top else "float16")
    values.update(masked_cross_attn=bool(ctx.get("masked_cross_attn", False)),
                  treat_image_as_cimage=bool(ctx.get("treat_image_as_cimage", False)),
                  vision=str(root / "vision_tower"), llm=str(root / "llm"))
    return DamConfig(**{k: v for k, v in values.items() if v is not None})
