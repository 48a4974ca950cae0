"""`RkdTrainer`: fine-tune a grounding detector with RKD (``rkd.enabled: true`` in a detect config).

Per batch, on top of the grounding loss (`Trainer`):

* **Distillation** (``rkd.distill``): each image's cached regions (`groundscope.distill.regions`) are matched
  one-to-one to the final decoder layer's boxes (Hungarian on L1 + GIoU; no class cost, the regions are
  class-agnostic); the matched queries' features projected by the head's W are the student embeddings; L1 over
  the regions and IRM over all regions of the batch (`groundscope.train.rkd_loss`).
* **CLIP-text classifier**: the head classifies every query against the teacher's text embeddings of the
  prompt's class names (sigmoid focal loss, target = the class of the query's Hungarian-matched base box,
  normalised by the number of boxes like the grounding loss). With weight transfer that classifier is the
  transfer one alone: it replaces the RKD classifier, as in the reference (official: custom_fast_rcnn.py ~L106-110).
* **Pseudo max score** (``rkd.pseudo``): the image-level labels are put into the detection prompt without boxes
  (their tokens are left out of the grounding loss, as an unannotated class must not be taught "absent"); each
  cached pseudo-box picks the decoder query whose box fits it best (GIoU >= 0.5, not a base box's query) and that
  query's token-level scores are pushed towards the label's tokens (BCE against the one-hot label, summed over
  the prompt's classes as the reference sums over its classes, a class of several tokens counting once as the
  mean over its tokens); the head's classifier's class scores the same way (the reference's PMS acts on its classifier, custom_fast_rcnn.py ~L343-351).
* **Weight transfer** (``rkd.weight_transfer``): the transfer classifier (`groundscope.models.rkd_head`) trains
  on the base boxes and the pseudo-boxes. When ``model.path`` is a model exported by an RKD run, its head's W
  is loaded and frozen for every loss (the reference's second stage, official zero_shot_classifier.py ~L113-116
  and configs/coco/COCO_OVD_RKD_PIS_WeightTransfer.yaml); otherwise W trains through L1 + IRM only (a
  single-run departure, see `groundscope.models.rkd_head`).

The exported model folder holds the detector plus ``rkd_head/`` (`groundscope.models.rkd_head`); `load_detector`
loads both and `detect` combines the scores by the head's rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from groundscope.distill.regions import ImageRegions, RegionCache, RegionSettings, embed_regions, read_image_labels
from groundscope.models.teacher import Teacher
from groundscope.models.rkd_head import RKD_HEAD_DIR, RkdHead, RkdHeadConfig
from groundscope.box_ops import cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from groundscope.train import distributed as dist_
from groundscope.train.config import ConfigError
from groundscope.train.data import PooledDataset
from groundscope.train.loop import Trainer, TrainError
from groundscope.train.optim import apply_freeze, frozen_modules
from groundscope.train.losses import sigmoid_focal_loss
from groundscope.train.progress import step_progress
from groundscope.train.rkd_loss import pseudo_max_score_loss, rkd_irm_loss, rkd_l1_loss

PSEUDO_MIN_GIOU = 0.5  # a pseudo-box no query has found yet teaches nothing (and would pick a random query)


class _RkdJoint(torch.nn.Module):
    """The detector's submodules under their own names plus the RKD head as ``rkd``: one namespace for freeze
    prefixes, lr multipliers and parameter groups."""

    def __init__(self, detector_model: torch.nn.Module, head: RkdHead):
        super().__init__()
        if any(True for _ in detector_model.named_parameters(recurse=False)):
            raise TrainError("the detector has parameters outside its submodules; the RKD head cannot join it")
        for name, child in detector_model.named_children():
            self.add_module(name, child)
        self.rkd = head


def match_regions(pred_boxes: torch.Tensor, regions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment of K regions to Q predicted boxes (both (., 4) normalised cxcywh), cost
    L1 - GIoU. Returns (query indices, region indices)."""
    if regions.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    p, r = pred_boxes.detach().float(), regions.float()
    cost = torch.cdist(p, r, p=1) - generalized_box_iou(cxcywh_to_xyxy(p), cxcywh_to_xyxy(r))
    q, k = linear_sum_assignment(cost.cpu().numpy())
    return q.astype(np.int64), k.astype(np.int64)


def _normalised(boxes_xyxy: np.ndarray, width: int, height: int, flipped: bool) -> torch.Tensor:
    """(N, 4) xyxy pixels of the original image -> (N, 4) cxcywh normalised, mirrored when the sample was."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4).copy()
    if flipped:
        b = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)
    b = b / np.asarray([width, height, width, height], dtype=np.float64)
    return xyxy_to_cxcywh(torch.as_tensor(b.clip(0, 1), dtype=torch.float32))


class RkdTrainer(Trainer):
    """`Trainer` + RKD's losses and head (see the module docstring)."""

    def _setup_model(self, detector) -> None:
        super()._setup_model(detector)
        r, config = self.cfg.rkd, self.cfg
        if self.head is not None:
            raise ConfigError("rkd.enabled and caption.enabled: train the caption head and RKD in separate runs")
        manifest = Path(r.regions) / "manifest.json"
        teacher_source = r.teacher or RegionCache(r.regions).settings.teacher
        if manifest.exists() and r.teacher:
            cached = RegionCache(r.regions).settings.teacher
            if Path(cached).resolve() != Path(r.teacher).resolve() and cached != r.teacher:
                raise ConfigError(f"rkd.teacher '{r.teacher}' differs from the teacher of the region cache "
                                  f"'{r.regions}' ({cached}); use that teacher or another rkd.regions folder")
        self.teacher = Teacher(teacher_source, self.device, r.text_template)
        self.teacher_source = teacher_source
        self.rkd_head = RkdHead(RkdHeadConfig(int(self.model.config.d_model), self.teacher.dim, r.weight_transfer,
                                              r.score_weight, str(teacher_source), r.text_template)).to(self.device)
        # A detector exported by an RKD run brings its head: start from it (the reference's weight-transfer stage
        # starts from the RKD stage's checkpoint) and, with weight transfer, freeze its W.
        prior = getattr(self.detector, "rkd", None)
        self.detector.rkd = None  # proposals, pseudo-boxes and training use the grounding scores alone
        self.w_frozen = False
        if prior is not None:
            loaded = self._init_from(prior.head)
            if r.weight_transfer:
                self.rkd_head.proj.requires_grad_(False)
                self.w_frozen = True
            self.console.print(f"RKD head: {', '.join(loaded)} from the RKD head of '{self.cfg.model.path}'"
                               + ("; W frozen (weight transfer)" if self.w_frozen else ""), highlight=False)
        if r.weight_transfer:  # the RKD classifier is replaced: its scale and bias have no loss left
            self.rkd_head.logit_scale.requires_grad_(False)
            self.rkd_head.bias.requires_grad_(False)
        self.trainable = _RkdJoint(self.model, self.rkd_head)
        self.frozen = apply_freeze(self.trainable, config.model.freeze)
        self._frozen_modules = frozen_modules(self.trainable, config.model.freeze)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._regions: dict[str, ImageRegions] = {}

    def _init_from(self, prior: RkdHead) -> list[str]:
        """Copy the tensors of an earlier run's head that exist here with the same shape; returns their names."""
        c, p = self.rkd_head.config, prior.config
        if (p.d_model, p.teacher_dim) != (c.d_model, c.teacher_dim):
            raise ConfigError(f"model.path '{self.cfg.model.path}' holds an RKD head of d_model {p.d_model} -> "
                              f"teacher_dim {p.teacher_dim}; this run needs {c.d_model} -> {c.teacher_dim} (teacher "
                              f"'{self.teacher_source}'): use the same teacher, or remove that model's rkd_head/")
        mine = self.rkd_head.state_dict()
        theirs = {k: v for k, v in prior.state_dict().items() if k in mine and mine[k].shape == v.shape}
        self.rkd_head.load_state_dict(theirs, strict=False)
        return sorted(theirs)

    def _setup_data(self):
        dataset = super()._setup_data()
        part = dataset.parts[0] if isinstance(dataset, PooledDataset) else dataset
        r = self.cfg.rkd
        self.cache = self._build_cache(part)
        if r.pseudo:
            labels = {}
            for rec in part.records.images:
                reg = self._image_regions(rec.filename)
                labels[rec.filename] = reg.labels if reg is not None else []
            part.unboxed_names = lambda rec: labels.get(rec.filename, [])
        return dataset

    def _build_cache(self, part) -> RegionCache:
        """Finish (or reuse) the region cache for every training image."""
        r = self.cfg.rkd
        folder = Path(r.regions)
        if (folder / "manifest.json").exists():
            settings = RegionCache(folder).settings  # the cache's own settings win; new images get the same
        else:
            settings = RegionSettings(
                teacher=str(self.teacher_source), detector=str(self.cfg.model.path), k=r.k,
                proposal_prompts=list(r.proposal_prompts), proposal_top=r.proposal_top,
                pseudo_template=r.pseudo_template, pseudo_threshold=r.pseudo_threshold, image_labels=r.image_labels,
            )
        labels = read_image_labels(settings.image_labels) if settings.image_labels else None
        names = [rec.filename for rec in part.records.images]
        if not self.dist.is_main:  # several processes: rank 0 builds the cache, the others read it when it is done
            dist_.barrier()
            return RegionCache(folder)
        self.model.eval()
        with step_progress("RKD regions", len(names), self.console) as update:
            done = 0

            def on_image(_name, _reused):
                nonlocal done
                done += 1
                update(done, "")

            counts = embed_regions(self.detector, self.teacher, names, part.image_root, folder, settings, labels,
                                   on_image)
        self.detector.clear_cache()
        dist_.barrier()
        if counts["failed"]:
            first = next(iter(counts["failed"].items()))
            raise TrainError(f"{len(counts['failed'])} training image(s) could not be embedded for RKD, e.g. "
                             f"'{first[0]}': {first[1]}")
        if counts["embedded"]:
            self.console.print(f"RKD regions: {counts['embedded']} image(s) embedded, {counts['reused']} reused "
                               f"from '{folder}'", highlight=False)
        return RegionCache(folder)

    def _image_regions(self, filename: str) -> ImageRegions | None:
        if filename not in self._regions:
            self._regions[filename] = self.cache.get(filename)
        return self._regions[filename]

    def _record(self, index: int):
        ds = self.dataset
        part = ds.parts[0] if isinstance(ds, PooledDataset) else ds
        return part.records.images[index]

    def _text(self, names: list[str]) -> torch.Tensor:
        """(C, D) teacher text embeddings of class names (cached; the teacher is frozen)."""
        missing = [n for n in dict.fromkeys(names) if n not in self._text_cache]
        if missing:
            for n, e in zip(missing, self.teacher.embed_texts(missing)):
                self._text_cache[n] = e.to(self.device)
        if not names:
            return torch.zeros((0, self.teacher.dim), device=self.device)
        return torch.stack([self._text_cache[n] for n in names])

    # ------------------------------------------------------------------ loss
    @staticmethod
    def _token_onehot(prompt, entity: int, length: int, device) -> torch.Tensor:
        """(L,) 1 at the tokens of `entity`, 0 elsewhere."""
        onehot = torch.zeros(length, device=device)
        onehot[[t for t in prompt.token_spans[entity] if t < length]] = 1.0
        return onehot

    @staticmethod
    def _token_classes(prompt, text_mask: torch.Tensor, length: int) -> torch.Tensor:
        """(L,) long: the prompt class of each token (-1 for special tokens, separators, padding and tokens
        outside `text_mask` (T,)), what `pseudo_max_score_loss` sums over."""
        classes = torch.full((length,), -1, dtype=torch.long, device=text_mask.device)
        for c, toks in enumerate(prompt.token_spans):
            toks = [t for t in toks if t < min(length, text_mask.shape[0])]
            if toks:
                classes[toks] = c
        classes[: text_mask.shape[0]][~text_mask] = -1
        return classes

    def _batch_loss(self, batch, autocast) -> tuple[torch.Tensor, dict[str, float]]:
        r = self.cfg.rkd
        out, dn = self._detector_forward(batch, autocast)
        records = [self._record(i) for i in batch.indices]
        regions = [self._image_regions(rec.filename) for rec in records]
        # Tokens of prompt classes that have no box in the image (image-level labels) are left out of the box loss.
        text_mask = out.text_mask.clone()
        unboxed: list[set[int]] = []
        for b, (prompt, target) in enumerate(zip(batch.prompts, batch.targets)):
            labels = set(regions[b].labels) if (r.pseudo and regions[b] is not None) else set()
            boxed = set(int(e) for e in target.entity.tolist())
            ents = {e for e, name in enumerate(prompt.labels) if name in labels and e not in boxed}
            unboxed.append(ents)
            for e in ents:
                text_mask[b, [t for t in prompt.token_spans[e] if t < text_mask.shape[1]]] = False
        loss, parts = self._grounding_loss(out, batch, dn, text_mask)

        last = out.decoder[-1]
        feats = out.query_features  # (B, Q, d)
        matches = self.criterion.match(last, batch.targets)
        num_boxes = max(float(sum(len(t) for t in batch.targets)), 1.0)
        extra: dict[str, torch.Tensor] = {}

        # The head's CLIP-text classifier on base boxes (unboxed classes are not negatives either); with weight
        # transfer it is the transfer classifier alone (it replaces the RKD classifier in the reference).
        head_loss = feats.new_zeros((), dtype=torch.float32)
        texts = []
        for b, prompt in enumerate(batch.prompts):
            names = list(prompt.labels)
            text = self._text(names)
            texts.append(text)
            keep = [c for c in range(len(names)) if c not in unboxed[b]]
            if not keep:
                continue
            target = torch.zeros((feats.shape[1], len(names)), device=feats.device)
            q, t = matches[b]
            if len(q):
                target[q, batch.targets[b].entity.to(feats.device)[t]] = 1.0
            logits = self.rkd_head.class_logits(feats[b].float(), text)[:, keep]
            head_loss = head_loss + sigmoid_focal_loss(logits, target[:, keep]).sum() / num_boxes
        extra["rkd.transfer" if self.rkd_head.transfer is not None else "rkd.head"] = r.head_weight * head_loss

        # Distillation: matched queries' projections vs the teacher's region embeddings.
        if r.distill:
            students, teachers = [], []
            for b, (rec, reg) in enumerate(zip(records, regions)):
                if reg is None or not len(reg.boxes):
                    continue
                boxes = _normalised(reg.boxes, rec.width, rec.height, batch.flipped[b]).to(feats.device)
                q, k = match_regions(last.boxes[b], boxes)
                students.append(self.rkd_head.embed(feats[b, torch.as_tensor(q, device=feats.device)].float()))
                teachers.append(torch.as_tensor(reg.embeddings[k], dtype=torch.float32, device=feats.device))
            if students:
                s, t = torch.cat(students), torch.cat(teachers)
                extra["rkd.l1"] = r.l1_weight * rkd_l1_loss(s, t)
                extra["rkd.irm"] = r.irm_weight * rkd_irm_loss(s, t)

        # Pseudo max score on the pseudo-boxes' queries.
        if r.pseudo:
            tok_logits, tok_targets, tok_classes, cls_logits, cls_targets, image_of = [], [], [], [], [], []
            for b, (rec, reg) in enumerate(zip(records, regions)):
                if reg is None or not len(reg.pseudo_boxes):
                    continue
                prompt = batch.prompts[b]
                entity_of = {name: e for e, name in enumerate(prompt.labels)}
                boxes = _normalised(reg.pseudo_boxes, rec.width, rec.height, batch.flipped[b]).to(feats.device)
                giou = generalized_box_iou(cxcywh_to_xyxy(last.boxes[b].detach().float()), cxcywh_to_xyxy(boxes))
                taken = set(matches[b][0].tolist())
                for j, label in enumerate(reg.pseudo_labels):
                    e = entity_of.get(label)
                    if e is None:
                        continue  # the label did not fit the prompt's token budget
                    col = giou[:, j].clone()
                    if taken:
                        col[list(taken)] = -2.0
                    q = int(col.argmax())
                    if float(col[q]) < PSEUDO_MIN_GIOU:
                        continue
                    tok_logits.append(last.logits[b, q])
                    tok_targets.append(self._token_onehot(prompt, e, last.logits.shape[-1], feats.device))
                    tok_classes.append(self._token_classes(prompt, out.text_mask[b], last.logits.shape[-1]))
                    image_of.append(b)
                    cls_logits.append(self.rkd_head.class_logits(feats[b, q].float(), texts[b]))
                    cls_targets.append(torch.nn.functional.one_hot(torch.tensor(e), len(prompt.labels))
                                       .float().to(feats.device))
            extra["rkd.pms"] = feats.new_zeros((), dtype=torch.float32)  # logged as 0 when no query fits a pseudo-box
            parts["rkd.pseudo_boxes"] = float(len(tok_logits))
            if tok_logits:
                images = torch.as_tensor(image_of, device=feats.device)
                # the reference's reductions: summed over the prompt's classes (a class = the mean over its
                # tokens), mean over an image's pseudo-boxes, mean over the images that have one
                # (custom_fast_rcnn.py ~L280, ~L295, ~L350-351)
                pms = pseudo_max_score_loss(torch.stack(tok_logits), torch.stack(tok_targets),
                                            torch.stack(tok_classes), images)
                # the head's classifier (prompts differ in length: one (1, C_b) row per pseudo-box, regrouped)
                per_image: dict[int, list[torch.Tensor]] = {}
                for b, lg, tg in zip(image_of, cls_logits, cls_targets):
                    per_image.setdefault(b, []).append(pseudo_max_score_loss(lg[None], tg[None]))
                pms = pms + torch.stack([torch.stack(v).mean() for v in per_image.values()]).mean()
                extra["rkd.pms"] = r.pseudo_weight * pms

        for k, v in extra.items():
            loss = loss + v
            parts[k] = float(v.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts

    # ------------------------------------------------------------------ checkpoints / export
    def state_dict(self) -> dict:
        return {**super().state_dict(), "rkd": self.rkd_head.state_dict()}

    def load_checkpoint(self, path: str | Path) -> None:
        from groundscope.train import checkpoint as ckpt_io

        ck = ckpt_io.load_checkpoint(path, map_location=self.device)
        if "rkd" not in ck:
            raise TrainError(f"'{path}' was written without an RKD head; resume it with rkd.enabled: false")
        try:
            self.rkd_head.load_state_dict(ck["rkd"])
        except RuntimeError as e:
            raise TrainError(f"the RKD head in '{path}' does not fit this one ({e}); resume with the same rkd "
                             "settings (weight_transfer, teacher)") from e
        super().load_checkpoint(path)

    def export(self, dtype: torch.dtype) -> Path:
        model_dir = super().export(dtype)
        self.rkd_head.save(model_dir / RKD_HEAD_DIR, self.teacher_source)
        return model_dir

    def evaluate(self, final: bool = False) -> dict | None:
        # Evaluate what `load_detector` will give: the detector with this head's scores combined.
        from groundscope.models.rkd_head import RkdScorer

        self.detector.rkd = RkdScorer(self.rkd_head, self.teacher)
        try:
            return super().evaluate(final)
        finally:
            self.detector.rkd = None
