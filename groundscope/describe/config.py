"""DAM's settings and shared constants: `DamConfig` (what fixes its inputs, prompts and generation; saved in
config.json under ``groundscope_dam``), the prompt's image token and label ids, and `DamError`."""

from __future__ import annotations

from dataclasses import dataclass, field

from groundscope.describe.focal import CROP_MODES

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200  # the reference's placeholder id in input_ids (LLaVA)
IGNORE_INDEX = -100
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
PROJECTORS = ("mlp2x_gelu", "mlp_downsample")


class DamError(RuntimeError):
    """A DAM model cannot be built, loaded or used; the message says why and what to do."""


@dataclass
class DamConfig:
    """What fixes DAM's inputs, prompts and generation (saved in config.json under ``groundscope_dam``).

    Attributes:
        vision / llm: where the vision model (a SiglipVisionModel folder or hub id) and the causal LM came from.
        prompt: the user turn for an image; exactly one ``<image>``.
        video_prompt: the user turn for a video; ``{images}`` becomes one ``<image>`` per frame.
        conv_template: only "vicuna_v1": ``{system} USER: {prompt} ASSISTANT:``, answers end with EOS.
        image_size / image_mean / image_std / resample / image_aspect_ratio: the encoder's input processing.
        projector: "mlp2x_gelu" or "mlp_downsample".
        feature_layer: hidden state fed to the projector (-2: output of the second-to-last layer).
        select_feature: "cls_patch" keeps every token (SigLIP has no CLS), "patch" drops the first.
        num_frames: frames per video (DAM-3B-Video: 8).
        gate: "raw" (released: h + a * x) or "tanh" (h + tanh(a) * x).
        masked_cross_attn: crop tokens attend only to context tokens under the mask (the reference's option).
        treat_image_as_cimage: False (reference default): a region whose crop is the full image (identical
            8-channel input halves) gets the full pass's features, without adapters.
        min_crop: the focal crop's minimum box side in pixels.
        crop_mode: the focal crop's geometry: "clamp" (the reference's: clamped to the image, then stretched to
            the square input) or "square" (centred on the region, padded past the border; for models trained so).
        focal_crop: False for the ablation without the focal crop (the full image and mask only: the crop pass
            then sees the full image, which `treat_image_as_cimage` False answers with the full pass's features).
        context_provider: the context provider's own settings, as its ``context_provider/config.json`` names them
            (``num_attention_heads``, ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``,
            ``num_hidden_layers``, ``context_provider_layer_indices``); the official ContextProvider builds its
            layers from that config, not the tower's (context_provider.py ~95-112, ~183-189, ~245-253, ~314-316).
            None (a DAM groundscope builds): the vision tower's values, one layer per tower layer.
        pixel_dtype: "float16": focal pixels are rounded to float16 before the tower, as the official
            ``get_image_tensor`` casts them (describe_anything_model.py ~144-162) whatever the model's dtype;
            "float32" keeps them unrounded (groundscope's own DAMs, trained so). A released folder (no
            ``groundscope_dam`` block) loads with "float16".
        temperature / top_p / max_new_tokens: generation defaults (the reference's ``get_description``:
            0.2 / 0.5 / 512; describe_anything_model.py ~125). ``GENERATION_PRESETS`` has DLC-Bench's.
    """

    vision: str | None = None
    llm: str | None = None
    prompt: str = "<image>\nDescribe the masked region in detail."
    video_prompt: str = ("Video: {images}\nGiven the video in the form of a sequence of frames above, describe the "
                         "object in the masked region in the video in detail.")
    conv_template: str = "vicuna_v1"
    system: str = VICUNA_V1_SYSTEM
    image_size: int = 384
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    resample: str = "bicubic"
    image_aspect_ratio: str = "resize"
    projector: str = "mlp_downsample"
    feature_layer: int = -2
    select_feature: str = "cls_patch"
    num_frames: int = 8
    gate: str = "raw"
    masked_cross_attn: bool = False
    treat_image_as_cimage: bool = False
    min_crop: int = 48
    crop_mode: str = "clamp"
    focal_crop: bool = True
    context_provider: dict | None = None
    pixel_dtype: str = "float32"
    temperature: float = 0.2
    top_p: float = 0.5
    max_new_tokens: int = 512

    def __post_init__(self):
        if self.conv_template != "vicuna_v1":
            raise DamError(f"conv_template {self.conv_template!r} is not supported; use 'vicuna_v1' (DAM's)")
        if self.prompt.count(IMAGE_TOKEN) != 1 or "{images}" not in self.video_prompt:
            raise DamError("prompt needs exactly one '<image>' and video_prompt an '{images}' placeholder")
        for name, value, allowed in (("projector", self.projector, PROJECTORS), ("gate", self.gate, ("raw", "tanh")),
                                     ("select_feature", self.select_feature, ("cls_patch", "patch")),
                                     ("crop_mode", self.crop_mode, CROP_MODES),
                                     ("pixel_dtype", self.pixel_dtype, ("float16", "float32"))):
            if value not in allowed:
                raise DamError(f"DamConfig.{name} = {value!r}; use one of {list(allowed)}")
