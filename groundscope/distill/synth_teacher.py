"""A small CLIP for the synthetic world: the stand-in for the web-trained teacher RKD distils from.

RKD's premise is a teacher that has seen every class (CLIP saw the web). Here that is a transformers `CLIPModel`
(a small ViT on 64 px crops + a small text transformer over the detector's WordPiece vocabulary) trained on crops
of *all* colour-shape combinations, novel ones included, with their names: each step embeds a batch of crops and
every class name, and the crop must pick its own name (the image-to-text half of CLIP's InfoNCE, with all names
as the negatives; with 64 names, the text-to-image half would add nothing). Crops are jittered (box edges moved
by up to 15 % of the side) because the regions it will embed are detector proposals, not exact boxes.

The saved folder loads with `groundscope.models.teacher.Teacher` like any hub CLIP (model, image processor,
tokenizer).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from groundscope.models.teacher import crop_regions

# The synthetic CLIP learns bare class names (no "a photo of a"): RKD runs with it set rkd.text_template: "{}".
SYNTH_TEXT_TEMPLATE = "{}"


def read_crops(coco_file: str | Path, max_images: int | None = None) -> tuple[list[Image.Image], list[np.ndarray], list[int], list[str]]:
    """(images, per-annotation (image index, box xyxy) pairs, label indices, class names) of a COCO file."""
    from groundscope.images import load_image

    coco_file = Path(coco_file)
    data = json.loads(coco_file.read_text(encoding="utf-8"))
    cats = sorted(data["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    index = {c["id"]: k for k, c in enumerate(cats)}
    ims = data["images"][:max_images] if max_images else data["images"]
    pos = {im["id"]: k for k, im in enumerate(ims)}
    images = [load_image(coco_file.parent / im["file_name"]) for im in ims]
    items, labels = [], []
    for a in data["annotations"]:
        if a["image_id"] in pos:
            x, y, w, h = a["bbox"]
            items.append(np.asarray([pos[a["image_id"]], x, y, x + w, y + h], dtype=np.float64))
            labels.append(index[a["category_id"]])
    return images, items, labels, names


def _jitter(box: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.uniform(-amount, amount, 4) * np.asarray([w, h, w, h])
    return np.asarray([x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]])


def _crop_pixels(image: torch.Tensor, box: np.ndarray, size: int, mean: torch.Tensor, std: torch.Tensor,
                 flip: bool = False) -> torch.Tensor:
    """(3, H, W) uint8 + an xyxy box -> (3, size, size) normalised crop (the processor's output for it)."""
    _, h, w = image.shape
    x0, y0 = int(np.clip(np.floor(box[0]), 0, w - 1)), int(np.clip(np.floor(box[1]), 0, h - 1))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0 + 1, w)), int(np.clip(np.ceil(box[3]), y0 + 1, h))
    crop = image[:, y0:y1, x0:x1].float() / 255.0
    if flip:
        crop = crop.flip(-1)
    crop = F.interpolate(crop[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    return (crop.clamp(0, 1) - mean) / std


def build_clip(tokenizer_dir: str | Path, image_size: int = 64, patch: int = 8, width: int = 128, layers: int = 4,
               dim: int = 128, seed: int = 0):
    """A random small CLIPModel, its image processor and the WordPiece tokenizer of `tokenizer_dir`."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id),
        vision_config=dict(image_size=image_size, patch_size=patch, hidden_size=width, intermediate_size=2 * width,
                           num_hidden_layers=layers, num_attention_heads=4),
        projection_dim=dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              do_center_crop=False, do_resize=True)
    # Resize straight to a square: a proposal's crop keeps the whole object (no centre crop cutting it off).
    proc.size = {"height": image_size, "width": image_size}
    return model, proc, tok


def train_synth_teacher(coco_file: str | Path, tokenizer_dir: str | Path, out: str | Path, steps: int = 1500,
                        batch_size: int = 128, lr: float = 1e-3, seed: int = 0, val_file: str | Path | None = None,
                        log=print) -> dict:
    """Train the synthetic CLIP on the crops of `coco_file` (every category) and save it into `out`.

    Returns {"train_seconds", "val_accuracy" (top-1 name of the val crops, when val_file), "classes"}.
    """
    model, proc, tok = build_clip(tokenizer_dir, seed=seed)
    images, items, labels, names = read_crops(coco_file)
    rng = np.random.default_rng(seed)
    text = tok(names, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    y_all = torch.as_tensor(labels)
    # Crops are cut and resized in torch (bicubic with antialiasing, as the PIL processor resizes at inference):
    # through the processor, a 128-crop batch costs ~1 s of CPU.
    tensors = [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images]  # uint8
    size = int(proc.size["height"])
    mean = torch.as_tensor(proc.image_mean).view(3, 1, 1)
    std = torch.as_tensor(proc.image_std).view(3, 1, 1)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = rng.integers(len(items), size=batch_size)
        px = torch.stack([_crop_pixels(tensors[int(items[i][0])], _jitter(items[i][1:], rng, 0.15), size, mean, std,
                                       flip=rng.random() < 0.5) for i in idx])
        img = F.normalize(_features(model.get_image_features(pixel_values=px)), dim=-1)
        txt = F.normalize(_features(model.get_text_features(**text)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = F.cross_entropy(logits, y_all[torch.as_tensor(idx)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == y_all[torch.as_tensor(idx)]).float().mean()
            log(f"teacher step {step}: loss {loss.item():.3f}, batch accuracy {acc:.2f}")
    result = {"train_seconds": round(time.perf_counter() - start, 1), "classes": len(names)}
    model.eval()
    out = Path(out)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    if val_file is not None:
        result["val_accuracy"] = teacher_accuracy(out, val_file)
    (out / "teacher_train.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _features(x):
    return getattr(x, "pooler_output", x)


def teacher_accuracy(teacher_dir: str | Path, coco_file: str | Path, max_images: int = 200) -> dict:
    """Zero-shot top-1 accuracy of the saved teacher on the exact crops of `coco_file`: overall and split by
    whether the class name appears in `novel` (the synthetic world's held-out combinations)."""
    from groundscope.data.vocab import novel_classes
    from groundscope.models.teacher import Teacher

    t = Teacher(teacher_dir, text_template=SYNTH_TEXT_TEMPLATE)
    images, items, labels, names = read_crops(coco_file, max_images)
    crops = [c for it in items for c in crop_regions(images[int(it[0])], it[1:][None])]
    emb = t.embed_images(crops)
    pred = (emb @ t.embed_texts(names).T).argmax(-1).numpy()
    y = np.asarray(labels)
    novel = np.asarray([names[k] in set(novel_classes()) for k in labels])
    out = {"all": float((pred == y).mean()) if len(y) else float("nan"), "crops": int(len(y))}
    if novel.any():
        out["novel"] = float((pred[novel] == y[novel]).mean())
        out["base"] = float((pred[~novel] == y[~novel]).mean())
    return out
