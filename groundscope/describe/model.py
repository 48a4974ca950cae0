"""Describe Anything (DAM): a localized vision backbone + projector + causal LM that describes a masked region.

DAM (Lian et al., 2025; NVlabs/describe-anything, built on VILA / LLaVA) reads a region's focal prompt
(`groundscope.describe.focal`) through one vision encoder used twice, a full pass whose features are the context
of a crop pass (`groundscope.describe.backbone`). `mask_embed` and the adapters' gates start at zero, so an
untrained DAM is its base VLM looking at the crop (`DamModel.base_vlm_features`). The projector
(`groundscope.describe.projector`) maps features to LM embeddings. Each ``<image>`` of the vicuna_v1 prompt
becomes one frame's tokens; a video is its frames' tokens in time order.

`load_dam` reads the released folder layout (``llm/``, ``vision_tower/``, ``mm_projector/``,
``context_provider/``, ``config.json``) by renaming the reference's parameters onto ours, without
trust_remote_code; `DamModel.save` writes the same layout (names in `groundscope.describe.layout`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

# Some names are imported only to keep their old path, `groundscope.describe.model`, working (noqa: F401).
from groundscope.describe.backbone import (  # noqa: F401
    CONTEXT_KEYS,
    ContextAdapter,
    CrossAttention,
    LocalizedVisionBackbone,
    context_settings,
)
from groundscope.describe.config import (  # noqa: F401
    IGNORE_INDEX,
    IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
    PROJECTORS,
    VICUNA_V1_SYSTEM,
    DamConfig,
    DamError,
)
from groundscope.describe.focal import focal_batch
from groundscope.describe.layout import (
    _ADAPTER_NAMES,
    _RESAMPLE_IDS,
    DAM_DIRS,
    _config_from_folder,
    _load_strict,
    _read_state,
    _rename,
    _write_json,
)
from groundscope.describe.presets import GENERATION_PRESETS, generation_preset, seed_everything  # noqa: F401
from groundscope.describe.projector import Merge2x2, Projector  # noqa: F401


@dataclass
class DamOutput:
    """loss: scalar or None; logits (B, L, vocab); labels (B, L) aligned with logits (-100 off the answers) or
    None; attention_mask (B, L)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None
    attention_mask: torch.Tensor


class DamModel(nn.Module):
    """Backbone + projector + causal LM + tokenizer. Parameters: ``backbone.*`` (``vision``, ``mask_embed``,
    ``adapters``), ``projector.layers.*``, ``llm.*``."""

    def __init__(self, config: DamConfig, backbone: LocalizedVisionBackbone, projector: Projector, llm: nn.Module,
                 tokenizer):
        super().__init__()
        self.config, self.backbone, self.projector = config, backbone, projector
        self.llm, self.tokenizer = llm, tokenizer
        if tokenizer.eos_token_id is None:
            raise DamError("the tokenizer has no EOS token; DAM's answers end with it")

    @classmethod
    def from_parts(cls, config: DamConfig, vision: nn.Module, llm: nn.Module, tokenizer) -> "DamModel":
        """A fresh DAM on a vision model and an LM: zero mask embedding and gates, a random projector."""
        if getattr(vision.config, "image_size", config.image_size) != config.image_size:
            raise DamError(f"DamConfig.image_size {config.image_size} differs from the vision model's "
                           f"{vision.config.image_size}; set it to the vision model's input size")
        backbone = LocalizedVisionBackbone(vision, config.feature_layer, config.select_feature, config.gate,
                                           config.masked_cross_attn, config.treat_image_as_cimage,
                                           config.image_mean[0], config.image_std[0], config.context_provider)
        projector = Projector(config.projector, backbone.mask_embed.out_channels,
                              llm.get_input_embeddings().weight.shape[1])
        return cls(config, backbone, projector, llm, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.projector.layers[-1].weight.device

    # ------------------------------------------------------------------ visual tokens
    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(M, 8, S, S) focal pixels -> (M, V, H) LM embeddings, one row per frame."""
        return self.projector(self.backbone(pixel_values.to(self.device)))

    def base_vlm_features(self, crop: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) crop pixels -> (M, T, C): the same vision model without mask embedding or adapters."""
        return self.backbone.base_features(crop.to(self.device))

    def base_vlm_tokens(self, crop: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) crop pixels -> (M, V, H): what the base VLM feeds its LM for the crop."""
        return self.projector(self.base_vlm_features(crop))

    def focal_inputs(self, images: Sequence, masks: Sequence) -> tuple[torch.Tensor, list[int]]:
        """`focal_batch` with this model's input processing: ((M, 8, S, S), frames per region)."""
        cfg = self.config
        pixels, frames = focal_batch(images, masks, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.resample,
                                     cfg.image_aspect_ratio, cfg.min_crop, cfg.focal_crop, cfg.crop_mode)
        if cfg.pixel_dtype == "float16":  # official get_image_tensor: .to(dtype=torch.float16), ~144-162
            pixels = pixels.half().float()
        return pixels, frames

    # ------------------------------------------------------------------ text
    def user_message(self, frames: int, prompt: str | None = None) -> str:
        """The user turn for `frames` frames: the image prompt, the video prompt, or `prompt` (which must hold
        one ``<image>`` per frame)."""
        text = prompt or (self.config.prompt if frames == 1 else
                          self.config.video_prompt.format(images=IMAGE_TOKEN * frames))
        if text.count(IMAGE_TOKEN) != frames:
            raise DamError(f"prompt has {text.count(IMAGE_TOKEN)} '<image>' but the region has {frames} frames")
        return text

    def _ids_with_images(self, text: str) -> list[int]:
        """Token ids of `text` with IMAGE_TOKEN_INDEX for each ``<image>``, tokenized piece by piece as the
        reference's tokenizer_image_token: a BOS the tokenizer adds is kept once, at the start."""
        chunks = [self.tokenizer(c)["input_ids"] for c in text.split(IMAGE_TOKEN)]
        bos = self.tokenizer.bos_token_id
        offset = 1 if bos is not None and chunks[0][:1] == [bos] else 0
        ids = list(chunks[0][:offset])
        for k, chunk in enumerate(chunks):
            ids += ([IMAGE_TOKEN_INDEX] if k else []) + list(chunk[offset:])
        return ids

    def encode(self, user: str, answer: str | None = None) -> tuple[list[int], list[int]]:
        """(ids, labels) of one conversation: ``{system} USER: {user} ASSISTANT:`` then, with an answer,
        `` {answer}`` and EOS. Labels are -100 except on the answer and EOS. The answer's ids are those it has
        following the prompt (tokenized together, as LLaVA tokenizes the whole conversation)."""
        prompt = f"{self.config.system} USER: {user} ASSISTANT:"
        ids = self._ids_with_images(prompt)
        if answer is None:
            return ids, [IGNORE_INDEX] * len(ids)
        joint = self._ids_with_images(f"{prompt} {answer}")
        tail = (joint[len(ids):] if joint[: len(ids)] == ids
                else self.tokenizer(f" {answer}", add_special_tokens=False)["input_ids"])
        tail = list(tail) + [self.tokenizer.eos_token_id]
        return ids + tail, [IGNORE_INDEX] * len(ids) + tail

    def tokenize(self, frames: Sequence[int], answers: Sequence[str] | None = None,
                 prompt: str | Sequence[str | None] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (B, T) for regions of `frames` frames.
        `prompt` is one user turn for every region or a list with one per region (None: the default)."""
        if answers is not None and len(answers) != len(frames):
            raise DamError(f"{len(answers)} answers for {len(frames)} regions")
        prompts = [prompt] * len(frames) if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(frames):
            raise DamError(f"{len(prompts)} prompts for {len(frames)} regions")
        pairs = [self.encode(self.user_message(f, prompts[i]), answers[i] if answers is not None else None)
                 for i, f in enumerate(frames)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        stack = lambda rows, value: torch.nn.utils.rnn.pad_sequence(  # noqa: E731
            [torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)
        ids, labels = zip(*pairs)
        return {"input_ids": stack(ids, pad), "attention_mask": stack([[1] * len(i) for i in ids], 0),
                "labels": stack(labels, IGNORE_INDEX)}

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, visual: torch.Tensor,
              labels: torch.Tensor | None = None):
        """Replace each IMAGE_TOKEN_INDEX by one frame's tokens (rows of `visual` in order of appearance).

        Args:
            input_ids / attention_mask / labels: (B, T); padding (mask 0) is dropped before re-padding.
            visual: (M, V, H), M = the number of placeholders.
        Returns:
            inputs_embeds (B, L, H), attention_mask (B, L) long, labels (B, L) (-100 on visual tokens) or None;
            right-padded.
        """
        device = visual.device
        input_ids = input_ids.to(device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        placeholders = int(((input_ids == IMAGE_TOKEN_INDEX) & attention_mask.bool()).sum())
        if placeholders != visual.shape[0]:
            raise DamError(f"input_ids hold {placeholders} image placeholders but {visual.shape[0]} frames were "
                           "given; pass one focal-pixel row per '<image>'")
        emb = self.llm.get_input_embeddings()
        seqs, labs, k = [], [], 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            lab = labels[b].to(device)[keep] if labels is not None else torch.full_like(ids, IGNORE_INDEX)
            text = emb(ids.clamp(min=0))
            parts, lparts, start = [], [], 0
            for p in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                parts += [text[start:p], visual[k].to(text.dtype)]
                lparts += [lab[start:p], lab.new_full((visual.shape[1],), IGNORE_INDEX)]
                k, start = k + 1, p + 1
            seqs.append(torch.cat(parts + [text[start:]]))
            labs.append(torch.cat(lparts + [lab[start:]]))
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        embeds = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        mask = (torch.arange(embeds.shape[1], device=device) < lengths[:, None]).long()
        out_labels = torch.nn.utils.rnn.pad_sequence(labs, batch_first=True, padding_value=IGNORE_INDEX)
        return embeds, mask, (out_labels if labels is not None else None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                visual_tokens: torch.Tensor | None = None) -> DamOutput:
        """LM logits (and, with labels, the mean next-token loss over labelled tokens) for (B, T) input_ids
        holding image placeholders, with (M, 8, S, S) `pixel_values` or precomputed (M, V, H) `visual_tokens`."""
        if (pixel_values is None) == (visual_tokens is None):
            raise DamError("pass exactly one of pixel_values (focal pixels) or visual_tokens")
        visual = self.visual_tokens(pixel_values) if visual_tokens is None else visual_tokens
        embeds, mask, labels = self.embed(input_ids, attention_mask, visual, labels)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
        return DamOutput(loss=out.loss, logits=out.logits, labels=labels, attention_mask=mask)

    @torch.no_grad()
    def generate(self, images: Sequence, masks: Sequence, prompt: str | None = None, temperature: float | None = None,
                 top_p: float | None = None, max_new_tokens: int | None = None, seed: int | None = None,
                 **kwargs) -> list[str]:
        """Descriptions of N regions (see `focal_inputs`). The vision pass is batched over every frame; the LM
        generates each region on its own, so no padding sits inside a prompt. ``temperature`` 0 is greedy;
        `seed` seeds every generator first (`seed_everything`)."""
        cfg = self.config
        if seed is not None:
            seed_everything(seed)
        pixels, frames = self.focal_inputs(images, masks)
        visual = self.visual_tokens(pixels)
        batch = self.tokenize(frames, None, prompt)
        temperature = cfg.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature,
                    "top_p": cfg.top_p if top_p is None else top_p} if temperature > 0 else {"do_sample": False}
        eos, texts, start = self.tokenizer.eos_token_id, [], 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        for i, f in enumerate(frames):
            embeds, mask, _ = self.embed(batch["input_ids"][i:i + 1], batch["attention_mask"][i:i + 1],
                                         visual[start:start + f])
            start += f
            ids = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, eos_token_id=eos, pad_token_id=pad,
                                    max_new_tokens=max_new_tokens or cfg.max_new_tokens, **sampling, **kwargs)
            text = self.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
            eos_text = self.tokenizer.eos_token or ""
            texts.append(text[: -len(eos_text)].strip() if eos_text and text.endswith(eos_text) else text)
        return texts

    # ------------------------------------------------------------------ files
    def save(self, out_dir: str | Path, base_vlm: bool = False) -> Path:
        """Write the released DAM layout (names in `groundscope.describe.layout`), readable by `load_dam` and, for the
        raw gate form, by the reference code.

        With ``base_vlm=True`` the DAM parts (mask embedding, ``context_provider/``) are left out: the folder
        of the base VLM (VILA layout) that ``load_dam(..., from_base_vlm=True)`` starts a DAM from."""
        from safetensors.torch import save_file

        out, cfg, bb = Path(out_dir), self.config, self.backbone

        def part(name: str, state: dict, config: dict) -> dict:
            (out / name).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, out / name / "model.safetensors")
            _write_json(out / name / "config.json", config)
            return config

        self.llm.save_pretrained(out / "llm")
        self.tokenizer.save_pretrained(out / "llm")
        prefix = "" if hasattr(bb.vision, "vision_model") else "vision_model."
        vision_sd = {prefix + k: v for k, v in bb.vision.state_dict().items()}
        if not base_vlm:
            vision_sd.update({f"vision_model.embeddings.mask_patch_embedding.{k}": v
                              for k, v in bb.mask_embed.state_dict().items()})
        vcfg = part("vision_tower", vision_sd, {**bb.vision.config.to_dict(), "architectures": ["SiglipVisionModel"],
                                                **({} if base_vlm else {"num_mask_channels": 1})})
        _write_json(out / "vision_tower" / "preprocessor_config.json", {
            "image_processor_type": "SiglipImageProcessor", "do_resize": True, "do_rescale": True,
            "do_normalize": True, "rescale_factor": 1 / 255, "image_mean": cfg.image_mean, "image_std": cfg.image_std,
            "resample": _RESAMPLE_IDS[cfg.resample], "size": {"height": cfg.image_size, "width": cfg.image_size}})
        pcfg = part("mm_projector", self.projector.state_dict(), {
            "mm_projector_type": self.projector.kind, "model_type": "v2l_projector",
            "architectures": ["MultimodalProjector"]})
        ctx = {f"context_provider_module.layers.{k}": v for k, v in
               _rename(bb.adapters.state_dict(), _ADAPTER_NAMES, reverse=True).items()}
        vc = bb.vision.config
        ccfg = None if base_vlm else part("context_provider", ctx, {
            "model_type": "context_provider", "architectures": ["ContextProvider"],
            "context_provider_type": "cross_attn_end_to_all", "hidden_size": vc.hidden_size, **bb.context,
            "num_channels": 3, "num_mask_channels": 1, "image_size": cfg.image_size,
            "patch_size": bb.patch_size, "zero_init_output": True,
            "masked_cross_attn": cfg.masked_cross_attn, "treat_image_as_cimage": cfg.treat_image_as_cimage})
        dtype = next(self.llm.parameters()).dtype
        _write_json(out / "config.json", {
            "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "model_dtype": str(dtype),
            "llm_cfg": self.llm.config.to_dict(), "vision_tower_cfg": vcfg, "mm_projector_cfg": pcfg,
            "context_provider_cfg": ccfg, "hidden_size": self.llm.get_input_embeddings().weight.shape[1],
            "mm_hidden_size": vc.hidden_size, "mm_vision_select_layer": cfg.feature_layer,
            "mm_vision_select_feature": cfg.select_feature, "image_aspect_ratio": cfg.image_aspect_ratio,
            "num_video_frames": cfg.num_frames, "groundscope_dam": asdict(cfg)})
        if base_vlm:
            import shutil

            shutil.rmtree(out / "context_provider", ignore_errors=True)  # an earlier save into the same folder
        return out


def load_dam(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             from_base_vlm: bool = False) -> DamModel:
    """Load a DAM folder in the released layout (nvidia/DAM-3B, or one `DamModel.save` wrote).

    With ``from_base_vlm=True`` a VILA-layout folder without ``context_provider/`` or mask embedding loads too,
    those parts zero-initialised (an untrained DAM: the start of DAM training).
    Raises:
        DamError: the folder is not in that layout or its parameters do not match.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    root = Path(path)
    needed = DAM_DIRS[:3] if from_base_vlm else DAM_DIRS
    absent = [d for d in ("config.json",) + needed if not (root / d).exists()]
    if absent:
        raise DamError(f"{root} is not a DAM folder: {absent} missing (expected config.json, "
                       f"{', '.join(d + '/' for d in DAM_DIRS)}); download nvidia/DAM-3B or pass from_base_vlm=True "
                       "for a VILA folder")
    config = _config_from_folder(root, json.loads((root / "config.json").read_text()))
    try:
        llm = AutoModelForCausalLM.from_pretrained(root / "llm", dtype=dtype)
        # As official language_model/builder.py ~117-123: the slow tokenizer, legacy=False, right padding. Under
        # transformers 5 "slow" reads tokenizer.json as well (a folder without tokenizer.model loads).
        tokenizer = AutoTokenizer.from_pretrained(root / "llm", use_fast=False, legacy=False, padding_side="right")
        vision = AutoModel.from_config(AutoConfig.from_pretrained(root / "vision_tower"))
    except (OSError, ValueError) as e:
        raise DamError(f"cannot load the LM or vision tower of {root}: {e}") from e
    if llm.get_input_embeddings().weight.shape[0] != len(tokenizer):
        # official model_utils.py ~91: model.resize_token_embeddings(len(tokenizer)), whichever way it goes
        llm.resize_token_embeddings(len(tokenizer))
    model = DamModel.from_parts(config, vision, llm, tokenizer)
    bb = model.backbone
    state, own = _read_state(root / "vision_tower"), set(bb.vision.state_dict())
    mask_prefix = "vision_model.embeddings.mask_patch_embedding."
    mask_sd = {k[len(mask_prefix):]: state.pop(k) for k in list(state) if k.startswith(mask_prefix)}
    state = {k[len("vision_model."):] if k not in own and k.startswith("vision_model.") else k: v
             for k, v in state.items()}
    _load_strict(bb.vision, state, f"{root}/vision_tower", optional=("head.", "post_layernorm.", "vision_model.head.",
                                                                     "vision_model.post_layernorm."))
    if mask_sd or not from_base_vlm:
        _load_strict(bb.mask_embed, mask_sd, f"{root}/vision_tower mask_patch_embedding")
    _load_strict(model.projector, _read_state(root / "mm_projector"), f"{root}/mm_projector")
    if (root / "context_provider").exists():
        ctx = {k.removeprefix("context_provider_module.layers."): v
               for k, v in _read_state(root / "context_provider").items()}
        _load_strict(bb.adapters, _rename(ctx, _ADAPTER_NAMES), f"{root}/context_provider")
    return model.to(device=device, dtype=dtype).eval()
