"""The settings each benchmark is run with: the official code's, or groundscope's plain ones.

`groundscope eval run` asks the detector and scores the results the way the code behind the published tables
does (mmdetection's ``mm_grounding_dino`` configs, iSEE-Laboratory/LLMDet ``configs/val/*``), unless told
otherwise. ``docs/protocols.md`` lists every setting with its source and the published numbers.

=========  ==============================================================================================
kind       official settings (`official_settings`)
=========  ==============================================================================================
lvis       40 class names a prompt, the top 300 of each chunk kept and the chunks concatenated
           (~9,300 boxes an image), duplicate names prompted under their own ids; standard AP on the
           300 best of an image, fixed AP on the 10,000 best of a category
           (configs/grounding_dino_swin_t.py ~L150: ``max_per_img=300, chunked_size=40``)
coco/odvg  every class in one prompt, top 300; pycocotools' maxDets [100, 300, 1000] (``CocoMetric``)
odinw      as coco, per dataset, with the per-dataset ``caption_prompt``; each AP rounded to 3 decimals
           before the mean (configs/val/grounding_dino_swin-t_odinw13.py / _odinw35.py)
refexp     boxes scored by the model family's rule (`default_rec_rule`), hit at IoU >= 0.5
           (``RefExpMetric``; MDETR's GIoU with ``overlap="giou"``)
phrase     each phrase prompted with its ``tokens_positive_eval`` spans, R@1/5/10 and R@-1 (upper bound)
=========  ==============================================================================================

`PLAIN` is what `detect` does by default (as many names a prompt as fit in the text limit, the top
`max_detections` over all chunks, duplicates merged, COCO's maxDets [1, 10, 100], the mean over the whole
expression): the synthetic world's benchmark and the training loop's evaluation use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from groundscope.evaluate.coco import COCO_MAX_DETS, MMDET_MAX_DETS
from groundscope.evaluate.refexp import OVERLAPS
from groundscope.prompts import REC_RULES

LVIS_CHUNK_SIZE = 40


@dataclass(frozen=True)
class EvalSettings:
    """How the detector is asked and how its results are scored.

    Attributes:
        chunk_size: class names per prompt (None: as many as fit in the text limit).
        per_chunk: keep `max_detections` per chunk and concatenate the chunks (else the best over all chunks).
        official_names: prompt names as the official code does (duplicates under their own category, blank names
            kept with no tokens).
        max_dets: pycocotools' three per-image caps for COCO-style metrics.
        rec_rule: which tokens score a box for a referring expression (`groundscope.prompts.rec_prompt`).
        overlap: "iou" or "giou" for a referring-expression hit.
        caption_prompt: per class name, a prefix / name / suffix for the prompt (ODinW's ``caption_prompt``).
    """

    chunk_size: int | None = None
    per_chunk: bool = False
    official_names: bool = False
    max_dets: tuple[int, int, int] = COCO_MAX_DETS
    rec_rule: str = "mean"
    overlap: str = "iou"
    caption_prompt: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of class names or None, not {self.chunk_size}")
        if len(self.max_dets) != 3 or any(int(m) < 1 for m in self.max_dets):
            raise ValueError(f"max_dets must be three positive caps, not {list(self.max_dets)}")
        if self.rec_rule not in REC_RULES:
            raise ValueError(f"rec_rule must be one of {', '.join(REC_RULES)}, not {self.rec_rule!r}")
        if self.overlap not in OVERLAPS:
            raise ValueError(f"overlap must be one of {', '.join(OVERLAPS)}, not {self.overlap!r}")

    def record(self) -> dict:
        """The settings as JSON values (the journal header and metrics.json carry them)."""
        out = asdict(self)
        out["max_dets"] = [int(m) for m in self.max_dets]
        return out

    def detect_kwargs(self) -> dict:
        """The `GroundingDetector.detect` arguments that differ from its defaults (so duck-typed detectors that
        know only the basic arguments still work with the plain settings)."""
        out = {}
        if self.chunk_size is not None:
            out["chunk_size"] = self.chunk_size
        if self.per_chunk:
            out["per_chunk"] = True
        if self.official_names:
            out["official_names"] = True
        if self.caption_prompt:
            out["caption_prompt"] = self.caption_prompt
        return out

    def refer_kwargs(self) -> dict:
        """The `GroundingDetector.refer` arguments that differ from its defaults (see `detect_kwargs`)."""
        return {} if self.rec_rule == "mean" else {"rec_rule": self.rec_rule}


PLAIN = EvalSettings()


def default_rec_rule(model: str | None) -> str:
    """The referring rule of the model's family: LLMDet's for LLMDet checkpoints, MM-Grounding-DINO's otherwise
    (registry names; a hub id or folder not in the registry is taken as Grounding DINO / MM-GDINO)."""
    from groundscope.models.registry import REGISTRY

    entry = REGISTRY.get(model or "")
    if entry is not None and entry.family == "LLMDet":
        return "llmdet"
    if model and "llmdet" in str(model).lower():
        return "llmdet"
    return "mmgdino"


def official_settings(kind: str, model: str | None = None) -> EvalSettings:
    """The settings of the official evaluation of a dataset kind (see the module docstring)."""
    if kind == "lvis":
        return EvalSettings(chunk_size=LVIS_CHUNK_SIZE, per_chunk=True, official_names=True)
    if kind in ("coco", "odvg", "odinw"):
        return EvalSettings(official_names=True, max_dets=MMDET_MAX_DETS)
    if kind == "refexp":
        return EvalSettings(rec_rule=default_rec_rule(model))
    return EvalSettings()
