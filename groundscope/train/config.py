"""Training configuration: dataclasses per section, loaded from YAML and validated with errors that say where.

A config file has up to eight sections; only ``model.path``, ``data.train.path`` and one of
``train.max_steps`` / ``train.epochs`` are required::

    model:    {path: mm-gdino-tiny, freeze: [model.text_backbone], device: cpu}
    data:     {train: {path: odvg.jsonl, label_map: label_map.json}, val: {path: val/coco.json},   # or a list
               scales: [480, 512, 544], max_size: 800, flip_prob: 0.5, num_negatives: 85}
    loss:     {cls: 1.0, bbox: 5.0, giou: 2.0, match_cls: 2.0, match_bbox: 5.0, match_giou: 2.0}
    optim:    {lr: 1.0e-4, weight_decay: 1.0e-4, backbone_lr_mult: 0.1, text_lr_mult: 0.1, clip_grad: 0.1}
    schedule: {kind: step, warmup_steps: 1000, milestones: [20000, 27000], gamma: 0.1}
    train:    {max_steps: 30000, batch_size: 2, accumulate: 1, bf16: false, seed: 0, out_dir: runs/x,
               denoising: {enabled: true, queries: 100, label_noise: 0.5, box_noise: 1.0}}
    eval:     {every: 1000, max_detections: 100}
    caption:  {enabled: true, llm: runs/world_lm, grids: [8, 12], lora: {r: 16, alpha: 32}}   # LLMDet

``task: dam`` (top level; default ``detect``) trains Describe Anything instead of a detector with the same
loop, optimizer, schedule, checkpoints and logs: ``model.path`` is a DAM or base-VLM folder
(`groundscope.describe.load_dam`), ``data.train`` / ``data.val`` are region-description files
(`groundscope.data.regions`), freeze prefixes and lr multipliers name DamModel parameters
(``backbone.vision``, ``backbone.mask_embed``, ``backbone.adapters``, ``projector``, ``llm``), and the
``dam`` section holds the rest::

    task: dam
    model:    {path: runs/base_vlm, freeze: [backbone.vision, llm]}
    data:     {train: {path: data/synth_train/regions.json}, val: {path: data/synth_test/regions.json}}
    dam:      {lora: null, eval_samples: 4}

``model.path`` may be a trained DAM (all its parts load) or a base VLM (no ``context_provider/``: the mask
embedding and the adapters' gates start at zero).

The detector-only keys (``data.scales``, ``max_size``, ``flip_prob``, negatives, paraphrases, ``loss``,
``caption``, ``train.denoising``) do not apply there.

Every field's meaning, default and allowed range is in the dataclasses below. An unknown key is an error that
names its path and the valid keys (a typo must not silently fall back to a default); a bad value names the key,
the value and what is allowed (`groundscope.train.config_fields` builds the dataclasses from the mapping,
`groundscope.train.overrides` applies ``--set`` edits first). Relative paths are relative to the working
directory, as for every other groundscope command (the example configs are meant to be run from the repository
root).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from groundscope.train.config_fields import ConfigError, _build, _spec
from groundscope.train.overrides import apply_overrides


@dataclass
class DataSource:
    """One annotation file."""

    path: str = _spec(doc="COCO .json, ODVG .jsonl, GroundingCap .jsonl or MDETR refexp .json file")
    format: str = _spec("auto", choices=("auto", "coco", "odvg", "groundingcap", "refexp", "regions"),
                        doc="file format (regions: COCO-style masks + descriptions, the only one task dam reads)")
    label_map: str | None = _spec(None, doc="ODVG label map {\"0\": \"name\"} (detection records)")
    image_root: str | None = _spec(None, doc="folder the file names are relative to (default: the file's folder)")
    mode: str = _spec("auto", choices=("auto", "detection", "grounding", "expression"),
                      doc="how records become prompts (auto: refexp -> expression, COCO -> detection, "
                          "records with caption spans -> grounding)")


@dataclass
class ModelSection:
    path: str = _spec(doc="registry name, hub id or local directory (anything load_detector loads; task dam: a "
                          "DAM or base-VLM folder that load_dam reads)")
    freeze: list[str] = _spec(factory=list, doc="parameter name prefixes to freeze, e.g. model.text_backbone "
                                                "(task dam: backbone.vision, llm, projector ...)")
    device: str = _spec("auto", doc="cpu, cuda, cuda:1, mps or auto")


@dataclass
class DataSection:
    train: list[DataSource] = _spec(doc="training annotation files (one mapping or a list; records are pooled)")
    val: DataSource | None = _spec(None, doc="COCO/ODVG-detection annotations for periodic evaluation")
    scales: list[int] | None = _spec(None, min=32, doc="shortest-edge choices (default: the model's shortest edge)")
    max_size: int | None = _spec(None, min=32, doc="longest-edge cap (default: the model's longest edge)")
    flip_prob: float = _spec(0.5, min=0.0, max=1.0, doc="horizontal flip probability (detection records; "
                                                        "expressions too with flip_expressions)")
    flip_expressions: bool = _spec(False, doc="also flip referring-expression records, swapping their left/right "
                                              "words (MDETR's rule for captions)")
    num_negatives: int = _spec(85, min=0, doc="most negative classes per detection prompt")
    full_negative_prob: float = _spec(0.5, min=0.0, max=1.0, doc="probability of using all num_negatives")
    grounding_negatives: int = _spec(0, min=0, doc="phrases of other images appended to grounding captions")
    paraphrases: str | None = _spec(None, doc="JSON {word: [alternatives]} swapped into class names and "
                                              "referring expressions (groundscope.data.paraphrase)")
    paraphrase_prob: float = _spec(0.5, min=0.0, max=1.0, doc="probability of swapping each word the "
                                                              "paraphrase table knows")
    num_workers: int = _spec(0, min=0, doc="DataLoader worker processes (on a CPU-only machine they compete with "
                                            "torch's threads for the cores: keep 0 there)")
    shuffle: bool = _spec(True, doc="shuffle the records every epoch")


@dataclass
class LossSection:
    cls: float = _spec(1.0, min=0.0, doc="weight of the focal token-alignment loss")
    bbox: float = _spec(5.0, min=0.0, doc="weight of the L1 box loss")
    giou: float = _spec(2.0, min=0.0, doc="weight of the GIoU loss")
    match_cls: float = _spec(2.0, min=0.0, doc="matching cost weight of classification")
    match_bbox: float = _spec(5.0, min=0.0, doc="matching cost weight of L1")
    match_giou: float = _spec(2.0, min=0.0, doc="matching cost weight of GIoU")
    focal_alpha: float = _spec(0.25, min=0.0, max=1.0, doc="focal loss alpha")
    focal_gamma: float = _spec(2.0, min=0.0, doc="focal loss gamma")
    aux: bool = _spec(True, doc="also supervise every earlier decoder layer")
    encoder: bool = _spec(True, doc="also supervise the encoder's top-k proposals (two-stage models)")


@dataclass
class OptimSection:
    lr: float = _spec(1e-4, gt=0.0, doc="AdamW base learning rate")
    weight_decay: float = _spec(1e-4, min=0.0, doc="AdamW weight decay (not on norms, biases, embeddings)")
    betas: list[float] = _spec(factory=lambda: [0.9, 0.999], min=0.0, max=0.999999, doc="AdamW betas")
    eps: float = _spec(1e-8, gt=0.0, doc="AdamW epsilon")
    backbone_lr_mult: float = _spec(0.1, min=0.0, doc="learning-rate factor of model.backbone (task dam: of the "
                                                       "vision encoder, backbone.vision)")
    text_lr_mult: float = _spec(0.1, min=0.0, doc="learning-rate factor of model.text_backbone (task dam: of the "
                                                   "language model, llm, LoRA adapters included)")
    lr_mults: dict[str, float] = _spec(factory=dict, min=0.0,
                                       doc="extra {name prefix: factor}; the longest matching prefix wins")
    clip_grad: float = _spec(0.1, min=0.0, doc="max gradient L2 norm (0 = no clipping)")


@dataclass
class ScheduleSection:
    kind: str = _spec("cosine", choices=("cosine", "step", "constant"), doc="decay after warm-up")
    warmup_steps: int = _spec(0, min=0, doc="linear warm-up length in optimizer steps")
    warmup_factor: float = _spec(0.001, gt=0.0, max=1.0, doc="learning-rate factor at step 0 of the warm-up")
    milestones: list[int] = _spec(factory=list, min=1, doc="step decay: optimizer steps where lr *= gamma")
    gamma: float = _spec(0.1, gt=0.0, max=1.0, doc="step decay factor")
    min_lr_ratio: float = _spec(0.0, min=0.0, max=1.0, doc="cosine floor as a fraction of the base lr")


@dataclass
class DenoisingSection:
    enabled: bool = _spec(False, doc="contrastive denoising queries (DINO's CDN) in the training forward; "
                                     "never at inference")
    queries: int = _spec(100, min=1, doc="denoising query budget per image: groups = queries // most boxes "
                                        "of one image in the batch (MM-GDINO: 100)")
    label_noise: float = _spec(0.5, min=0.0, max=1.0, doc="label noise scale: an entity is swapped for another "
                                                         "of the prompt with probability label_noise / 2")
    box_noise: float = _spec(1.0, min=0.0, doc="box noise scale (DINO's lambda): positives move < lambda x half "
                                              "the box size, negatives lambda..2 lambda x that")
    weight: float = _spec(1.0, min=0.0, doc="factor of the denoising loss in the total")


@dataclass
class TrainSection:
    out_dir: str = _spec("runs/train", doc="checkpoints, logs, the curve and the final model go here")
    max_steps: int | None = _spec(None, min=1, doc="optimizer steps (give this or epochs)")
    epochs: int | None = _spec(None, min=1, doc="passes over the training data (give this or max_steps)")
    batch_size: int = _spec(2, min=1, doc="images per forward pass")
    accumulate: int = _spec(1, min=1, doc="forward passes per optimizer step")
    seed: int = _spec(0, min=0, doc="seed of data order, augmentation, negatives and torch")
    bf16: bool = _spec(False, doc="bfloat16 autocast for the forward pass (weights and optimizer stay float32)")
    activation_checkpointing: bool = _spec(False, doc="recompute layer activations in backward: much less memory, "
                                                      "about a third more time (MM-GDINO's with_cp / num_cp)")
    log_every: int = _spec(10, min=1, doc="console refresh interval (every step is written to the JSONL log)")
    checkpoint_every: int = _spec(500, min=0, doc="optimizer steps between checkpoints (0 = only at the end)")
    keep_checkpoints: int = _spec(2, min=0, doc="step-numbered checkpoints kept besides last.pt")
    save_dtype: str = _spec("float32", choices=("float32", "float16", "bfloat16"),
                            doc="dtype of the exported safetensors weights")
    progress: bool = _spec(True, doc="rich progress display (only on a terminal)")
    denoising: DenoisingSection = _spec(factory=DenoisingSection, doc="contrastive denoising queries")


@dataclass
class LoraSection:
    r: int = _spec(128, min=1, doc="LoRA rank (LLMDet: 128)")
    alpha: int = _spec(256, min=1, doc="LoRA alpha (LLMDet: 256)")
    dropout: float = _spec(0.0, min=0.0, max=1.0, doc="LoRA dropout")
    targets: list[str] = _spec(factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"], doc="LM module names that get adapters")


@dataclass
class CaptionSection:
    """LLMDet's language-model supervision (groundscope.models.captioner)."""

    enabled: bool = _spec(False, doc="train with the caption head: image captions and region phrases")
    llm: str | None = _spec(None, doc="causal LM path or hub id (AutoModelForCausalLM); LLMDet: LLaVA-OV's Qwen2-0.5B")
    gguf_file: str | None = _spec(None, doc="GGUF file inside llm to load it from")
    head: str | None = _spec(None, doc="a trained caption head folder to start from (stage 2 starts from stage 1's)")
    levels: list[int] = _spec(factory=lambda: [2, 1], min=0, doc="memory levels of the image tokens, coarse first "
                                                                  "(p5, p4 of a stride-8/16/32 pyramid)")
    grids: list[int] = _spec(factory=lambda: [20, 27], min=1, doc="resized side of each level (LLMDet: 20, 27)")
    image_weight: float = _spec(1.0, min=0.0, doc="weight of the image-caption loss")
    region_weight: float = _spec(1.0, min=0.0, doc="weight of the region-phrase loss")
    image_max_tokens: int = _spec(1600, min=2, doc="tokens of the whole image-caption sequence kept: prompt + "
                                                   "visual tokens + caption (LLMDet: 1600)")
    region_max_tokens: int = _spec(40, min=2, doc="tokens of the whole region sequence kept: prompt + region token "
                                                  "+ phrase (LLMDet: 40)")
    max_regions: int = _spec(16, min=0, doc="boxes per image with a region phrase (LLMDet: 16)")
    lora: LoraSection | None = _spec(None, doc="LoRA adapters on the LM (stage 2); null keeps the LM frozen")
    default_prompt: str = _spec("auto", doc="detector prompt `groundscope caption` uses when given none; auto: "
                                           "the training data's class names (as many as fit the text budget)")
    template: str = _spec("auto", doc="LM sequence layout: chatml (LLMDet's), tokenizer (its chat template), plain; "
                                      "auto: chatml when the tokenizer has <|im_start|> / <|im_end|>")
    cross_attn_layers: int = _spec(0, min=0, doc="region cross-attention blocks in the LM (LLMDet: 6, at layers "
                                                 "0, 4, ..., 20 of 24); 0: none")
    region_index: str = _spec("matched", doc="region feature: matched (the matched query's) or official "
                                             "(LLMDet's row of the [denoising; matching] queries)")


@dataclass
class DamSection:
    """Describe Anything fine-tuning (``task: dam``; groundscope.train.dam)."""

    lora: LoraSection | None = _spec(None, doc="LoRA adapters on the language model (then leave llm out of "
                                               "model.freeze); null: the LM trains or stays frozen as model.freeze says")
    prompt: str | None = _spec(None, doc="user turn with one <image> (default: the model's, 'Describe the masked "
                                         "region in detail.')")
    max_text_tokens: int = _spec(512, min=16, doc="text tokens per sample (prompt + description); longer "
                                                 "descriptions are cut, without their EOS")
    eval_samples: int = _spec(4, min=0, doc="validation regions whose generated description (greedy) each "
                                            "evaluation writes to eval/step_N/samples.jsonl")
    max_new_tokens: int = _spec(96, min=1, doc="longest generated description in evaluation samples")
    focal_crop: bool = _spec(True, doc="false: the ablation without the focal crop (full image + mask only); "
                                       "recorded in the exported model's config")
    box_prob: float = _spec(0.0, min=0.0, max=1.0, doc="share of training regions given as their filled box "
                                                        "instead of the exact mask (what `describe --box` sends), "
                                                        "drawn per region and epoch")
    point_prob: float = _spec(0.0, min=0.0, max=1.0, doc="share of training regions given as one click (a disc at a "
                                                          "random pixel of the mask, what `describe --points` "
                                                          "sends), drawn per region and epoch; box_prob + "
                                                          "point_prob <= 1")


@dataclass
class SamSection:
    """A promptable segmenter (``task: sam``; groundscope.train.sam): SAM's training recipe on region files."""

    architecture: dict = _spec(factory=dict, doc="SamConfig fields (vision_config, prompt_encoder_config, "
                                                 "mask_decoder_config) for model.path: scratch")
    image_size: int = _spec(1024, min=32, doc="longest edge the image is resized to (and the square it is padded "
                                               "to); for model.path: scratch")
    max_objects: int = _spec(8, min=1, doc="objects prompted per image and step (drawn from its regions)")
    box_prob: float = _spec(0.5, min=0.0, max=1.0, doc="share of prompts that are the object's box (half of them "
                                                        "jittered by sam.jitter)")
    jitter: float = _spec(0.1, min=0.0, max=0.5, doc="box corners moved by up to this share of the box's side")
    click_prob: float = _spec(0.3, min=0.0, max=1.0, doc="share of prompts that are one click inside the mask; "
                                                          "the rest are 2-4 clicks")
    focal_weight: float = _spec(20.0, min=0.0, doc="focal loss weight (SAM: 20)")
    dice_weight: float = _spec(1.0, min=0.0, doc="dice loss weight (SAM: 1)")
    iou_weight: float = _spec(1.0, min=0.0, doc="weight of the MSE between predicted and actual IoU (SAM: 1)")


@dataclass
class RkdSection:
    """RKD: region-based knowledge distillation from a CLIP-like teacher (groundscope.train.rkd)."""

    enabled: bool = _spec(False, doc="train with the RKD head (distillation projection + CLIP-text classifier)")
    teacher: str | None = _spec(None, doc="CLIP-like teacher: hub id or folder (CLIPModel, SiglipModel, ...)")
    text_template: str = _spec("a photo of a {}", doc="how a class name becomes the teacher's text (the reference's: "
                                                      "'a photo of a {}'; a teacher that learnt bare names: '{}')")
    regions: str | None = _spec(None, doc="region cache folder (`groundscope distill embed-regions`); built "
                                          "here with the settings below when it does not exist yet")
    k: int = _spec(5, min=1, doc="class-agnostic regions per image (the reference: 5)")
    proposal_prompts: list[str] = _spec(
        factory=lambda: ["all objects", "all entities", "all visible objects and entities",
                         "all obscure objects and entities"],
        doc="prompts whose boxes are the class-agnostic proposals (the reference prompts MViT with these)")
    proposal_top: int = _spec(50, min=1, doc="boxes kept per proposal prompt before NMS")
    image_labels: str | None = _spec(None, doc="image-level labels: a COCO file (each image's category names) or "
                                               "JSON lines {file_name, labels}; needed for pseudo-labels")
    pseudo_template: str = _spec("every {}", doc="prompt whose top-1 box is a label's pseudo-box")
    pseudo_threshold: float = _spec(0.95, min=0.0, max=1.0, doc="minimum score of a pseudo-box (reference: 0.95)")
    distill: bool = _spec(True, doc="the L1 + IRM distillation losses")
    l1_weight: float = _spec(0.15, min=0.0, doc="weight of the point-wise L1 loss (x100 inside; reference: 0.15)")
    irm_weight: float = _spec(0.15, min=0.0, doc="weight of the IRM loss (x100 inside; reference: 0.15)")
    pseudo: bool = _spec(False, doc="the pseudo max score loss on pseudo-boxes of image-level labels")
    pseudo_weight: float = _spec(0.1, min=0.0, doc="weight of the pseudo max score loss (reference: 0.1)")
    weight_transfer: bool = _spec(False, doc="the reference's transfer classifier (fc1/fc2 on a frozen W + fc3/fc4 "
                                            "residual); it replaces the RKD classifier; W is frozen when model.path "
                                            "is an RKD run's model")
    head_weight: float = _spec(1.0, min=0.0, doc="weight of the CLIP-text classifiers' focal loss on base boxes")
    score_weight: float = _spec(0.5, min=0.0, max=1.0, doc="lam of the inference rule g^(1-lam) * head^lam")


@dataclass
class EvalSection:
    every: int = _spec(0, min=0, doc="optimizer steps between evaluations on data.val (0 = only at the end)")
    at_end: bool = _spec(True, doc="evaluate after the last step when data.val is set")
    max_images: int | None = _spec(None, min=1, doc="evaluate on the first N validation images only")
    max_detections: int = _spec(100, min=1, doc="detections per image (COCO protocol: 100)")
    box_threshold: float = _spec(0.0, min=0.0, max=1.0, doc="drop detections below this score")
    batch_size: int = _spec(4, min=1, doc="(image, prompt) pairs per evaluation forward pass")


@dataclass
class TrainConfig:
    model: ModelSection = _spec(doc="the detector (task dam: the DAM / base VLM) to fine-tune")
    data: DataSection = _spec(doc="training and validation data")
    loss: LossSection = _spec(factory=LossSection, doc="loss and matching weights")
    optim: OptimSection = _spec(factory=OptimSection, doc="AdamW and gradient clipping")
    schedule: ScheduleSection = _spec(factory=ScheduleSection, doc="learning-rate schedule")
    train: TrainSection = _spec(factory=TrainSection, doc="loop length, batching, precision, outputs")
    eval: EvalSection = _spec(factory=EvalSection, doc="periodic COCO evaluation")
    caption: CaptionSection = _spec(factory=CaptionSection, doc="LLMDet caption supervision")
    task: str = _spec("detect", choices=("detect", "dam", "sam"), doc="what trains: a detector, Describe Anything, "
                                                                      "or a promptable segmenter")
    dam: DamSection = _spec(factory=DamSection, doc="Describe Anything fine-tuning (task: dam)")
    sam: SamSection = _spec(factory=SamSection, doc="promptable segmenter training (task: sam)")
    rkd: RkdSection = _spec(factory=RkdSection, doc="RKD distillation, pseudo-labels and weight transfer")

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.task != "dam":
            del out["dam"]  # a detector run's config.yaml stays as it was
        if self.task != "sam":
            del out["sam"]
        if self.rkd == RkdSection():
            del out["rkd"]  # likewise for runs without RKD (their checkpoints resume without warnings)
        return out


def setting_default(path: str) -> Any:
    """The default of the dotted setting `path` (e.g. ``"dam.point_prob"``), or `MISSING` when it has none (a
    required setting, a list entry, a key no section has)."""
    cls, value = TrainConfig, MISSING
    for part in path.split("."):
        if cls is None or not is_dataclass(cls):
            return MISSING
        f = next((f for f in fields(cls) if f.name == part), None)
        if f is None:
            return MISSING
        if f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            return MISSING
        cls = type(value) if is_dataclass(value) else None
    return asdict(value) if is_dataclass(value) else value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks that involve several fields."""
    t = cfg.train
    if (t.max_steps is None) == (t.epochs is None):
        raise ConfigError("train: give exactly one of max_steps and epochs")
    s = cfg.schedule
    if s.kind == "step" and not s.milestones:
        raise ConfigError("schedule.milestones: required for kind 'step' (optimizer steps where lr *= gamma)")
    if s.milestones != sorted(s.milestones):
        raise ConfigError(f"schedule.milestones: must be increasing, got {s.milestones}")
    if t.max_steps is not None:
        if s.warmup_steps >= t.max_steps:
            raise ConfigError(f"schedule.warmup_steps: must be < train.max_steps ({t.max_steps}), got {s.warmup_steps}")
        if s.milestones and s.milestones[-1] >= t.max_steps:
            raise ConfigError(f"schedule.milestones: must be < train.max_steps ({t.max_steps}), got {s.milestones}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas: must be two numbers, got {cfg.optim.betas}")
    if cfg.eval.every > 0 and cfg.data.val is None:
        what = "a region-description file" if cfg.task == "dam" else "a COCO or ODVG detection file"
        raise ConfigError(f"eval.every: evaluation needs data.val ({what})")
    if not cfg.data.train:
        raise ConfigError("data.train: list at least one annotation file")
    if cfg.data.scales is not None and not cfg.data.scales:
        raise ConfigError("data.scales: must list at least one shortest edge (or be left out)")
    if cfg.task == "dam":
        _validate_dam(cfg)
    elif cfg.task == "sam":
        _validate_sam(cfg)
    else:
        for src in list(cfg.data.train) + ([cfg.data.val] if cfg.data.val else []):
            if src.format == "regions":
                raise ConfigError(f"data: '{src.path}' has format regions (region descriptions), which only "
                                  "task: dam trains on")
        if cfg.dam != DamSection():
            raise ConfigError("dam: this section only applies to task: dam (add task: dam, or remove it)")
    if cfg.task != "sam" and cfg.sam != SamSection():
        raise ConfigError("sam: this section only applies to task: sam (add task: sam, or remove it)")
    _validate_rkd(cfg)
    c = cfg.caption
    if c.enabled and not c.llm and not c.head:
        raise ConfigError("caption.llm: the caption head needs a causal LM (a local folder such as the one "
                          "`groundscope pretrain-lm` writes, or a hub id), or caption.head: a trained head")
    if len(c.levels) != len(c.grids) or not c.levels:
        raise ConfigError(f"caption.levels {c.levels} and caption.grids {c.grids}: give one grid side per level")
    if c.template not in ("auto", "chatml", "tokenizer", "plain"):
        raise ConfigError(f"caption.template '{c.template}': use auto, chatml, tokenizer or plain")
    if c.region_index not in ("matched", "official"):
        raise ConfigError(f"caption.region_index '{c.region_index}': use matched or official")
    return cfg


def _validate_rkd(cfg: TrainConfig) -> None:
    r = cfg.rkd
    if not r.enabled:
        return  # a disabled section is ignored (an ablation's baseline is the same file with enabled: false)
    if cfg.task != "detect":
        raise ConfigError("rkd.enabled: RKD trains a detector (task: detect)")
    if cfg.caption.enabled:
        raise ConfigError("rkd.enabled and caption.enabled: train LLMDet's caption head and RKD in separate runs")
    if not r.regions:
        raise ConfigError("rkd.regions: name the region cache folder (made by `groundscope distill embed-regions`, "
                          "or here from rkd.teacher when the folder does not exist)")
    if not r.teacher and not (Path(r.regions) / "manifest.json").exists():
        raise ConfigError(f"rkd.teacher: the region cache '{r.regions}' does not exist yet; name the CLIP-like "
                          "teacher to build it with (hub id or folder)")
    if r.pseudo and not r.image_labels and not (Path(r.regions) / "manifest.json").exists():
        raise ConfigError("rkd.pseudo: pseudo-labels need rkd.image_labels (a COCO file or JSON lines of "
                          "{file_name, labels})")
    if "{}" not in r.pseudo_template or "{}" not in r.text_template:
        raise ConfigError("rkd.pseudo_template and rkd.text_template: must contain {} where the class name goes")
    if len(cfg.data.train) != 1:
        raise ConfigError(f"rkd.enabled: RKD trains on one data.train file (its regions are cached per image), "
                          f"got {len(cfg.data.train)}")


def _validate_dam(cfg: TrainConfig) -> None:
    """Checks of a ``task: dam`` config: only region files, no detector-only training features."""
    for where, src in [(f"data.train[{k}]", s) for k, s in enumerate(cfg.data.train)] + [("data.val", cfg.data.val)]:
        if src is not None and src.format not in ("auto", "regions"):
            raise ConfigError(f"{where}.format: task dam reads region-description files (format regions or auto), "
                              f"got {src.format}")
    if cfg.caption.enabled:
        raise ConfigError("caption.enabled: the caption head is a detector part; task dam trains its own LM")
    if cfg.train.denoising.enabled:
        raise ConfigError("train.denoising.enabled: denoising queries are a detector part; not for task dam")
    if cfg.train.activation_checkpointing:
        raise ConfigError("train.activation_checkpointing: not supported for task dam")
    if cfg.dam.box_prob + cfg.dam.point_prob > 1.0:
        raise ConfigError(f"dam.box_prob + dam.point_prob: the shares of regions given as boxes and as clicks add up "
                          f"to {cfg.dam.box_prob + cfg.dam.point_prob:g}; lower one so they are at most 1")
    prompt = cfg.dam.prompt
    if prompt is not None and prompt.count("<image>") != 1:
        raise ConfigError(f"dam.prompt: needs exactly one <image>, got {prompt!r}")
    if cfg.dam.lora is not None:
        hits = [p for p in cfg.model.freeze if p.rstrip(".") == "llm"]
        if hits:
            raise ConfigError("model.freeze: 'llm' would also freeze the dam.lora adapters inside it; leave llm out "
                              "(LoRA freezes the LM's own weights)")


def _validate_sam(cfg: TrainConfig) -> None:
    """Checks of a ``task: sam`` config: region files with masks, no detector or DAM features."""
    for where, src in [(f"data.train[{k}]", s) for k, s in enumerate(cfg.data.train)] + [("data.val", cfg.data.val)]:
        if src is not None and src.format not in ("auto", "regions"):
            raise ConfigError(f"{where}.format: task sam reads region files with masks (format regions or auto), "
                              f"got {src.format}")
    if cfg.caption.enabled or cfg.train.denoising.enabled or cfg.rkd.enabled:
        raise ConfigError("caption / train.denoising / rkd: detector parts; not for task sam")
    if cfg.dam != DamSection():
        raise ConfigError("dam: this section only applies to task: dam")
    if cfg.sam.box_prob + cfg.sam.click_prob > 1.0:
        raise ConfigError(f"sam.box_prob + sam.click_prob: the shares of box and one-click prompts add up to "
                          f"{cfg.sam.box_prob + cfg.sam.click_prob:g}; lower one so they are at most 1")
    if cfg.model.path == "scratch" and not cfg.sam.architecture:
        raise ConfigError("sam.architecture: model.path scratch builds a SamModel from these SamConfig fields; "
                          "give them (configs/sam_nano.yaml has an example) or a SAM folder as model.path")


def config_from_dict(raw: Any) -> TrainConfig:
    """Build and validate a config from a parsed YAML mapping."""
    return validate(_build(TrainConfig, raw, ""))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read and validate a YAML config, with `overrides` (``key.path=value``, see `apply_overrides`) applied
    first; errors are `ConfigError` prefixed with the file name (and the overrides, when there are any)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config '{path}': {e.strerror or e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    where = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    try:
        return config_from_dict(apply_overrides(raw, list(overrides)) if overrides else raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
