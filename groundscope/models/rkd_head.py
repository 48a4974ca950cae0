"""RKD's region head on a grounding detector: the distillation projection, the CLIP-text classifier it feeds, the
weight-transfer MLP, and the rule that combines its scores with the grounding scores at inference.

How RKD's Faster R-CNN parts map onto Grounding DINO (the reference, hanoonaR/object-centric-ovd, is detectron2):

* **Region embedding.** The reference projects a proposal's RoI feature with the classifier's linear layer W.
  A DETR-style detector has no RoI pooling; its region feature is the decoder query that predicts the box
  (OV-DETR and DK-DETR distil the same thing). So the student embedding of a teacher region is ``W h_q`` for the
  final decoder hidden state ``h_q`` (d_model) of the query matched to that region (Hungarian on L1 + GIoU of the
  boxes, `groundscope.train.rkd`).
* **Classifier.** As in the reference's ZeroShotClassifier (official: ovd/modeling/roi_heads/
  zero_shot_classifier.py ~L68-86), W also classifies: ``logit(q, c) = s * cos(W h_q, t_c) + b`` against the
  teacher's text embedding ``t_c`` of the class name. It trains on the base boxes and on the pseudo-boxes (pseudo
  max score loss) and through RKD's L1 + IRM losses. Departure: the reference fixes ``s = 50`` with no bias and a
  sigmoid cross-entropy; here ``s`` and ``b`` are learned (start 10 and -5, p ~ 0.01 at cos 0) and the loss is
  the grounding loss's sigmoid focal loss, because a DETR scores 900 queries per image, not 512 sampled RoIs.
* **Weight transfer** (official: zero_shot_classifier.py ~L89-185, WeightTransferZeroShotClassifier). It REPLACES
  the classifier above. With ``W`` (D, d) the frozen projection: ``T = fc2(LeakyReLU_0.1(fc1(W)))`` with fc1
  d -> D and fc2 D -> d applied to each row of W (~L119-121, ~L166-168), so T is (D, d); a residual branch
  ``r(h) = fc4(LeakyReLU_0.1(fc3(h)))`` with fc3 d -> 1024 and fc4 1024 -> D (~L123-124, ~L170-172); the region
  embedding is ``r(h) + T h`` (no bias, ~L173) and classifies like the RKD classifier. W receives no gradient
  from any loss (``requires_grad=False`` in the reference, ~L115-116): the reference trains it in a previous RKD
  run (configs/coco/COCO_OVD_RKD_PIS_WeightTransfer.yaml starts from coco_ovd_rkd.pth), and so does groundscope
  when ``model.path`` is a model exported by an RKD run (`RkdTrainer` loads its W and freezes it). Departure:
  started from a detector without an RKD head, W has nothing to be copied from, so it trains in the same run
  through the L1 + IRM losses only (never through a classifier); start from an RKD run's model to restore the
  reference's two stages.
* **Inference rule.** For class prompts (``detect``), the score of (query, class) becomes the geometric mean
  ``g^(1 - lam) * c^lam`` of the grounding score ``g`` (mean sigmoid over the class's tokens, the published rule)
  and the head's probability ``c``, with ``lam = score_weight`` (default 0.5, saved with the head); the combined
  score is written back as the logit of every token of the class, so the published top-k and thresholds apply
  unchanged. Phrase grounding and referring expressions keep the grounding score (the head classifies class
  names, not free phrases).

Files (``<model>/rkd_head/``): ``config.json``, ``head.safetensors``, ``teacher/`` (the teacher's text side
when it was a local folder small enough to copy; otherwise ``config.json`` names the hub id). Heads with weight
transfer saved before it followed the reference (a d -> d -> d MLP, no residual branch) are refused on load with
a message to retrain; heads without weight transfer load unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RKD_HEAD_DIR = "rkd_head"
COPY_TEACHER_MAX_MB = 400


@dataclass
class RkdHeadConfig:
    """What a saved head needs to rebuild itself.

    Attributes:
        d_model: the detector's hidden size (input of W).
        teacher_dim: the teacher's embedding size (output of W).
        weight_transfer: whether the transfer classifier exists.
        score_weight: lam of the inference rule (0 = grounding only, 1 = head only).
        teacher: the teacher's hub id or folder (the saved copy when there is one).
        text_template: how a class name becomes the teacher's text (the reference's "a photo of a {}",
            docs/DATASETS.md ~L263; a config saved without it keeps the old "{}").
        residual_dim: width of the weight-transfer residual branch (the reference's 1024).
    """

    d_model: int
    teacher_dim: int
    weight_transfer: bool = False
    score_weight: float = 0.5
    teacher: str = ""
    text_template: str = "{}"
    residual_dim: int = 1024


class WeightTransfer(nn.Module):
    """The reference's weight-transfer function and residual branch (official: zero_shot_classifier.py
    ~L118-124, ~L165-173).

    Shapes: ``weight`` (D, d) the frozen projection W; ``h`` (..., d) query features -> (..., D) embeddings.
    """

    def __init__(self, d_model: int, teacher_dim: int, residual_dim: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(d_model, teacher_dim)  # each row of W: d -> D
        self.fc2 = nn.Linear(teacher_dim, d_model)  # D -> d: T is (D, d) like W
        self.fc3 = nn.Linear(d_model, residual_dim)  # residual branch on the features
        self.fc4 = nn.Linear(residual_dim, teacher_dim)

    def transfer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """(D, d) W -> (D, d) T = fc2(LeakyReLU_0.1(fc1(W)))."""
        return self.fc2(F.leaky_relu(self.fc1(weight), 0.1))

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(..., d), (D, d) -> (..., D): ``fc4(LeakyReLU_0.1(fc3(h))) + T h`` (T without bias, as the reference)."""
        residual = self.fc4(F.leaky_relu(self.fc3(h), 0.1))
        return residual + F.linear(h, self.transfer_weight(weight))


class RkdHead(nn.Module):
    """Distillation projection + CLIP-text classifiers.

    Shapes: ``h`` (..., d_model) query features; ``text`` (C, teacher_dim) class-name embeddings.
    """

    def __init__(self, config: RkdHeadConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.d_model, config.teacher_dim)  # W
        # sigmoid(10 * cos - 5): a neutral start (p ~ 0.01 at cos 0, 0.5 at cos 0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-5.0))
        self.transfer = (WeightTransfer(config.d_model, config.teacher_dim, config.residual_dim)
                         if config.weight_transfer else None)
        if self.transfer is not None:
            self.transfer_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.transfer_bias = nn.Parameter(torch.tensor(-5.0))

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., teacher_dim): the student region embedding W h (not normalised)."""
        return self.proj(h)

    def logits(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(..., d_model), (C, D) -> (..., C) logits of the RKD classifier."""
        z = F.normalize(self.embed(h), dim=-1)
        return self.logit_scale.exp() * z @ F.normalize(text, dim=-1).T + self.bias

    def transfer_logits(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(..., d_model), (C, D) -> (..., C) logits of the weight-transfer classifier."""
        if self.transfer is None:
            raise RuntimeError("this RKD head was built without weight transfer")
        # W is frozen for every loss (official ~L115-116); detached here too, so no path reaches it even when the
        # single-run departure lets the distillation losses train it
        z = F.normalize(self.transfer(h, self.proj.weight.detach()), dim=-1)
        return self.transfer_scale.exp() * z @ F.normalize(text, dim=-1).T + self.transfer_bias

    def class_logits(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(..., d_model), (C, D) -> (..., C): the head's classifier -- the weight-transfer one when it exists
        (it replaces the RKD classifier, official custom_fast_rcnn.py ~L106-110), else the RKD classifier."""
        return self.transfer_logits(h, text) if self.transfer is not None else self.logits(h, text)

    def probabilities(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(..., C) class probabilities: sigmoid of `class_logits` (official predict_probs ~L243-250)."""
        return self.class_logits(h, text).sigmoid()

    # ------------------------------------------------------------------ files
    def save(self, out_dir: str | Path, teacher_source: str | Path | None = None) -> Path:
        """Write config + weights (+ a copy of a local teacher folder) into `out_dir`."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = RkdHeadConfig(**asdict(self.config))
        if teacher_source is not None:
            src = Path(teacher_source)
            size_mb = sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) / 2**20 if src.is_dir() else None
            if size_mb is not None and size_mb <= COPY_TEACHER_MAX_MB:
                if (out / "teacher").resolve() != src.resolve():
                    shutil.rmtree(out / "teacher", ignore_errors=True)
                    shutil.copytree(src, out / "teacher")
                cfg.teacher = "teacher"
            else:
                cfg.teacher = str(teacher_source)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n", encoding="utf-8")
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(out / "head.safetensors"))
        return out

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> "RkdHead":
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            cfg = RkdHeadConfig(**json.loads((folder / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"'{folder}' is not an RKD head folder (config.json: {e}); retrain or remove it") from e
        head = cls(cfg)
        try:
            state = load_file(str(folder / "head.safetensors"))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"'{folder}': cannot read head.safetensors ({e}); retrain or remove the folder") from e
        if cfg.weight_transfer and "transfer.fc3.weight" not in state:
            raise ValueError(
                f"'{folder}' holds a weight-transfer head saved before groundscope followed the reference's form "
                "(fc1 d->D, fc2 D->d on W plus the fc3/fc4 residual branch); retrain it with rkd.weight_transfer, "
                "or remove the folder to use the detector alone")
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"'{folder}': head.safetensors does not fit its config.json ({e}); retrain it") from e
        return head.to(device).eval()

    def teacher_path(self, folder: str | Path) -> str:
        """The teacher to embed class names with: the saved copy, or the recorded hub id / path."""
        t = self.config.teacher
        local = Path(folder) / t
        return str(local) if t and local.is_dir() else t


def combine_scores(grounding: torch.Tensor, head: torch.Tensor, weight: float) -> torch.Tensor:
    """The inference rule: ``g^(1 - w) * c^w`` elementwise (both in [0, 1])."""
    eps = 1e-12
    return torch.exp((1.0 - weight) * torch.log(grounding.clamp(min=eps)) + weight * torch.log(head.clamp(min=eps)))


def rescore_logits(logits: torch.Tensor, token_spans: list[list[int]], grounding: torch.Tensor,
                   head_probs: torch.Tensor, weight: float) -> torch.Tensor:
    """Write the combined (query, class) scores back as token logits.

    Args:
        logits: (Q, L) token logits of one (image, class prompt) pair.
        token_spans: per class, its token indices.
        grounding: (Q, C) grounding scores (mean sigmoid over each class's tokens).
        head_probs: (Q, C) the head's probabilities.
    Returns: (Q, L) logits where every token of class c holds logit(combined score of c); the mean (or max)
    sigmoid over the class's tokens is then exactly the combined score.
    """
    combined = combine_scores(grounding.float(), head_probs.float(), weight).clamp(1e-6, 1 - 1e-6)
    out = logits.clone()
    as_logit = torch.log(combined) - torch.log1p(-combined)
    for c, toks in enumerate(token_spans):
        if toks:
            out[:, toks] = as_logit[:, c : c + 1].to(out.dtype)
    return out


class RkdScorer:
    """Inference with a trained head: class-name embeddings from the teacher (cached per name) and the rescoring
    of one (image, class prompt) pair's token logits.

    Args:
        head: a trained `RkdHead`.
        teacher: a `groundscope.models.teacher.Teacher` (its text side embeds class names).
    """

    def __init__(self, head: RkdHead, teacher):
        self.head = head
        self.teacher = teacher
        self._text: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> "RkdScorer":
        from groundscope.models.teacher import Teacher

        head = RkdHead.load(folder, device)
        return cls(head, Teacher(head.teacher_path(folder), device, head.config.text_template))

    def text(self, names: list[str]) -> torch.Tensor:
        """(C, D) embeddings of class names."""
        missing = [n for n in dict.fromkeys(names) if n not in self._text]
        if missing:
            for n, e in zip(missing, self.teacher.embed_texts(missing)):
                self._text[n] = e
        return torch.stack([self._text[n] for n in names])

    @torch.inference_mode()
    def rescore(self, logits: torch.Tensor, features: torch.Tensor, prompt, score_rule: str = "mean") -> torch.Tensor:
        """(Q, L) token logits, (Q, d) query features, a class prompt -> (Q, L) logits holding the combined scores."""
        from groundscope.postprocess import entity_scores

        grounding = entity_scores(logits, prompt, score_rule)
        device = next(self.head.parameters()).device
        probs = self.head.probabilities(features.to(device).float(), self.text(list(prompt.labels)).to(device))
        return rescore_logits(logits, prompt.token_spans, grounding.to(device), probs,
                              self.head.config.score_weight).to(logits.device)
