"""Short model names -> where the weights live, and what each model is.

Configs as data (timm's registry idea): one table, read by `load_detector` and `groundscope models`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # a hub id ("org/name"); bundled models name their folder under groundscope/models/bundled
    family: str  # "Grounding DINO", "MM-Grounding-DINO", "LLMDet", "DAM"
    backbone: str
    description: str
    bundled: bool = False
    kind: str = "detector"  # "detector" (load_detector), "describer" (load_describer), "segmenter" (load_segmenter)
    build_hint: str = ""  # for a bundled model that may be absent from an install: how to build it
    dam_config: dict | None = None  # describers: DamConfig fields a released folder does not carry (its prompt)


KINDS = ("detector", "describer", "segmenter")

# Promptable segmenters: the checkpoints transformers' SAM, SAM 2, EdgeTAM and SAM 3 documentation loads
# (transformers models/*/configuration_*.py ``auto_docstring(checkpoint=...)`` and the model cards).
_SEGMENTERS = [
    ModelEntry("sam-vit-base", "facebook/sam-vit-base", "SAM", "ViT-B",
               "Segment Anything ViT-B (the segmenter of Describe Anything's official examples)", kind="segmenter"),
    ModelEntry("sam-vit-large", "facebook/sam-vit-large", "SAM", "ViT-L", "Segment Anything ViT-L",
               kind="segmenter"),
    ModelEntry("sam-vit-huge", "facebook/sam-vit-huge", "SAM", "ViT-H", "Segment Anything ViT-H, the most accurate "
               "SAM 1", kind="segmenter"),
    ModelEntry("sam2.1-hiera-tiny", "facebook/sam2.1-hiera-tiny", "SAM 2.1", "Hiera-T", "SAM 2.1, the fastest",
               kind="segmenter"),
    ModelEntry("sam2.1-hiera-small", "facebook/sam2.1-hiera-small", "SAM 2.1", "Hiera-S", "SAM 2.1 small",
               kind="segmenter"),
    ModelEntry("sam2.1-hiera-base-plus", "facebook/sam2.1-hiera-base-plus", "SAM 2.1", "Hiera-B+",
               "SAM 2.1 base-plus", kind="segmenter"),
    ModelEntry("sam2.1-hiera-large", "facebook/sam2.1-hiera-large", "SAM 2.1", "Hiera-L",
               "SAM 2.1 large, the most accurate SAM 2", kind="segmenter"),
    ModelEntry("edgetam", "yonigozlan/EdgeTAM-hf", "EdgeTAM", "RepViT", "EdgeTAM: SAM 2 for phones, ~20x faster "
               "than SAM 2 on device", kind="segmenter"),
    ModelEntry("sam3", "facebook/sam3", "SAM 3", "PE ViT-L", "SAM 3's tracker prompted with boxes and clicks "
               "(its text detector: load_detector('sam3'))", kind="segmenter"),
    ModelEntry("sam-nano", "sam-nano", "SAM", "ViT (tiny)", "a small SAM for the synthetic shapes world, built by "
               "groundscope train (task: sam); not shipped yet: its recipe does not reach useful masks "
               "(docs/masks.md)", bundled=True, kind="segmenter",
               build_hint="train one with groundscope train configs/sam_nano.yaml and package it with python "
                          "benchmarks/bundle_sam_nano.py runs/sam_nano/model (that recipe does not yet give useful "
                          "masks: docs/masks.md), or pass a SAM folder or hub id (facebook/sam-vit-base) with "
                          "--segmenter"),
]


REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            "gdino-tiny", "IDEA-Research/grounding-dino-tiny", "Grounding DINO", "Swin-T",
            "original Grounding DINO-T, pre-trained on O365, GoldG, Cap4M",
        ),
        ModelEntry(
            "gdino-base", "IDEA-Research/grounding-dino-base", "Grounding DINO", "Swin-B",
            "original Grounding DINO-B, pre-trained on more data including COCO (not zero-shot on COCO)",
        ),
        ModelEntry(
            "mm-gdino-tiny", "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det", "MM-Grounding-DINO",
            "Swin-T", "MM-GDINO-T pre-trained on O365v1, GoldG, V3Det (zero-shot on COCO and LVIS)",
        ),
        ModelEntry(
            "mm-gdino-base", "openmmlab-community/mm_grounding_dino_base_all", "MM-Grounding-DINO", "Swin-B",
            "MM-GDINO-B pre-trained on all the paper's data (not zero-shot on COCO)",
        ),
        ModelEntry(
            "mm-gdino-large", "openmmlab-community/mm_grounding_dino_large_all", "MM-Grounding-DINO", "Swin-L",
            "MM-GDINO-L pre-trained on all the paper's data (not zero-shot on COCO)",
        ),
        ModelEntry(
            "llmdet-tiny", "iSEE-Laboratory/llmdet_tiny", "LLMDet", "Swin-T",
            "MM-GDINO-T fine-tuned under LLM supervision on GroundingCap-1M; the recommended model for real photos",
        ),
        ModelEntry(
            "llmdet-base", "iSEE-Laboratory/llmdet_base", "LLMDet", "Swin-B",
            "LLMDet with a Swin-B backbone",
        ),
        ModelEntry(
            "llmdet-large", "iSEE-Laboratory/llmdet_large", "LLMDet", "Swin-L",
            "LLMDet with a Swin-L backbone; the most accurate, the slowest",
        ),
        ModelEntry(
            "nano", "nano", "MM-Grounding-DINO", "Swin 32-wide + MiniLM",
            "12M parameters, ships with groundscope, runs offline; trained on the synthetic shapes world only "
            "(groundscope/models/bundled/nano/README.md)",
            bundled=True,
        ),
        ModelEntry(
            "dam-nano", "dam-nano", "DAM", "SigLIP (tiny) + world LM",
            "Describe Anything on tiny parts, trained on the synthetic shapes world only; describes masked regions "
            "offline (`groundscope describe`)",
            bundled=True, kind="describer",
            build_hint="build it with python benchmarks/bench_dam.py --write && python "
                       "benchmarks/bundle_dam_nano.py (trains on the synthetic world), or pass a DAM folder or hub "
                       "id (nvidia/DAM-3B) with --model",
        ),
        ModelEntry(
            "dam-3b", "nvidia/DAM-3B", "DAM", "SigLIP + VILA-1.5 3B LM",
            "Describe Anything 3B: detailed descriptions of a region given as a mask, box or points (images)",
            kind="describer",
        ),
        ModelEntry(
            "dam-3b-video", "nvidia/DAM-3B-Video", "DAM", "SigLIP + VILA-1.5 3B LM",
            "Describe Anything 3B for videos: 8 frames, each with its own mask, described together",
            kind="describer",
            # A single image gets the joint checkpoint's prompt: official dam_server.py ~178-182
            # (--image_video_joint_checkpoint), evaluation/get_model_outputs.py ~29-32 (query "joint").
            dam_config={"prompt": "Image: <image>\nGiven the image above, describe the object in the masked region."},
        ),
    ]
    + _SEGMENTERS
}


def register(entry: ModelEntry) -> None:
    """Add (or replace) a registry entry, e.g. for a fine-tuned checkpoint your team shares."""
    REGISTRY[entry.name] = entry
