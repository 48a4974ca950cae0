"""Describe Anything training: region files (RLE / polygons), the synthetic world's exact region masks, DAM
fine-tuning through the trainer (frozen parts stay put, exact resume, export), and the base VLM pretraining.

Models are tiny (SigLIP 32 px / patch 8 / width 32 / 2 layers, a 1-layer Llama of width 32 on an untrained
world vocabulary) and worlds have a handful of images, so the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from groundscope.data.errors import DataFormatError
from groundscope.data.regions import (
    counts_to_mask,
    counts_to_rle_string,
    decode_segmentation,
    encode_rle,
    mask_to_counts,
    polygons_to_mask,
    read_regions,
    rle_string_to_counts,
)
from groundscope.data.synth import generate_world, write_world_regions
from groundscope.train.checkpoint import load_checkpoint
from groundscope.train.config import ConfigError, config_from_dict

runner = CliRunner()
TINY_VLM = dict(image_size=32, patch_size=8, hidden=32, layers=2, heads=2)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, 4, seed=4, split="train", regions=True)  # 22 objects, 7 partly hidden by others
    return out


@pytest.fixture(scope="module")
def val_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("val")
    generate_world(out, 2, seed=1, split="test", regions=True)
    return out


@pytest.fixture(scope="module")
def lm_dir(world, tmp_path_factory) -> Path:
    """An untrained world LM folder, as `groundscope pretrain-lm` lays it out."""
    from groundscope.train.world_lm import build_world_lm, build_world_tokenizer, world_texts

    torch.manual_seed(0)
    tok = build_world_tokenizer(world_texts(world / "groundingcap.jsonl"))
    out = tmp_path_factory.mktemp("lm")
    build_world_lm(tok, hidden=32, layers=1, heads=2).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base_vlm(world, lm_dir, tmp_path_factory) -> Path:
    from groundscope.train.base_vlm import pretrain_base_vlm

    out = tmp_path_factory.mktemp("vlm")
    pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out, steps=2, batch_size=4, progress=False, **TINY_VLM)
    return out


def _dam_config(base_vlm: Path, world: Path, out: Path, **sections) -> dict:
    cfg = {
        "task": "dam",
        "model": {"path": str(base_vlm), "freeze": ["backbone.vision", "llm"], "device": "cpu"},
        "data": {"train": {"path": str(world / "regions.json")}},
        "optim": {"lr": 1e-2, "backbone_lr_mult": 1.0, "text_lr_mult": 1.0, "clip_grad": 1.0},
        "train": {"max_steps": 3, "batch_size": 4, "out_dir": str(out), "checkpoint_every": 0,
                  "keep_checkpoints": 0, "progress": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def _train_losses(log: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "train"}


# ---------------------------------------------------------------------------------------------- RLE, polygons
def test_rle_and_polygon_decoding_by_hand():
    # Column-major runs of a 3x4 mask: col 0 = 0 0 1, col 1 = 1 1 1, col 2 = 1 0 0, col 3 = 0 0 0
    # -> 2 zeros, 5 ones, 5 zeros; compressed: one 5-bit group each, '0' + value.
    mask = np.array([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0]], dtype=bool)
    assert mask_to_counts(mask) == [2, 5, 5]
    assert counts_to_rle_string([2, 5, 5]) == "255" and rle_string_to_counts("255") == [2, 5, 5]
    assert encode_rle(mask) == {"size": [3, 4], "counts": "255"}
    for seg in ({"size": [3, 4], "counts": [2, 5, 5]}, {"size": [3, 4], "counts": "255"}):
        for coco in (True, False):
            assert np.array_equal(decode_segmentation(seg, 3, 4, use_pycocotools=coco), mask)
    # A mask that starts with a one begins with a zero-length run of zeros.
    assert mask_to_counts(np.array([[1, 0], [1, 1]], dtype=bool)) == [0, 2, 1, 1]
    # Counts past the third are stored as differences to the one two before, and may be negative.
    counts = [0, 40, 3, 1, 100, 2]
    assert rle_string_to_counts(counts_to_rle_string(counts)) == counts
    # Polygons: a pixel is inside when its centre is: the square (1, 1)-(4, 4) covers pixels 1..3, and the
    # triangle (1, 1), (5, 1), (1, 5) those whose centre has x + y < 6.
    square = np.zeros((6, 6), dtype=bool)
    square[1:4, 1:4] = True
    triangle = np.zeros((6, 6), dtype=bool)
    for r, c in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1)]:
        triangle[r, c] = True
    for coco in (True, False):
        assert np.array_equal(polygons_to_mask([[1, 1, 4, 1, 4, 4, 1, 4]], 6, 6, coco), square)
        assert np.array_equal(polygons_to_mask([[1, 1, 5, 1, 1, 5]], 6, 6, coco), triangle)
        both = decode_segmentation([[1, 1, 4, 1, 4, 4, 1, 4], [1, 1, 5, 1, 1, 5]], 6, 6, use_pycocotools=coco)
        assert np.array_equal(both, square | triangle)


def test_rle_codec_matches_pycocotools():
    coco = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for h, w, p in [(37, 53, 0.5), (64, 48, 0.02), (20, 20, 0.98), (1, 7, 0.5)]:
        mask = rng.random((h, w)) < p
        mask[h // 3: h // 2, w // 4: w // 2] = True  # long runs too, so counts need several 5-bit groups
        ref = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encode_rle(mask)["counts"] == ref["counts"].decode("ascii")
        counts = rle_string_to_counts(ref["counts"])
        assert np.array_equal(counts_to_mask(counts, h, w), mask)
        assert np.array_equal(coco.decode(coco.frPyObjects({"size": [h, w], "counts": counts}, h, w)), mask)
    # random star-shaped polygons: the numpy fill agrees with COCO's except along the outline
    for _ in range(3):
        t = np.sort(rng.uniform(0, 2 * np.pi, 12))
        r = rng.uniform(10, 40, 12)
        poly = np.stack([50 + r * np.cos(t), 50 + r * np.sin(t)], 1).ravel().tolist()
        a, b = polygons_to_mask([poly], 100, 100, True), polygons_to_mask([poly], 100, 100, False)
        assert (a & b).sum() / (a | b).sum() > 0.95


def test_region_file_errors_name_file_and_annotation(tmp_path):
    good = {"id": 7, "image_id": 1, "segmentation": {"size": [3, 4], "counts": "255"}, "caption": "A thing."}
    base = {"images": [{"id": 1, "file_name": "a.png", "height": 3, "width": 4}], "annotations": [good]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(base))
    rs = read_regions(path)
    assert rs.records[0].description == "A thing." and rs.records[0].image == tmp_path / "a.png"
    assert np.array_equal(rs.records[0].mask(), counts_to_mask([2, 5, 5], 3, 4))
    cases = [
        ({"segmentation": {"size": [4, 3], "counts": "255"}}, r"size \[4, 3\] differs from the image's \[3, 4\]"),
        ({"segmentation": {"size": [3, 4], "counts": [2, 5, 4]}}, "add up to 11 pixels"),
        ({"segmentation": {"size": [3, 4], "counts": "25~"}}, "outside COCO's alphabet"),
        ({"segmentation": {"size": [3, 4], "counts": [12]}}, "covers no pixel"),
        ({"segmentation": [[1, 1, 2, 2, 3]]}, "5 coordinates"),
        ({"caption": ""}, "'caption' must be a non-empty string"),
        ({"caption": None, "description": 3}, "'description' must be a non-empty string"),
        ({"image_id": 9}, "unknown image_id 9"),
    ]
    for change, pattern in cases:
        ann = {k: v for k, v in {**good, **change}.items() if v is not None}
        path.write_text(json.dumps({**base, "annotations": [good, ann]}))
        with pytest.raises(DataFormatError, match=pattern) as err:
            read_regions(path)
        assert str(err.value).startswith(f"{path}: annotations[1]: ") and "(id 7)" in str(err.value)
    path.write_text(json.dumps({**base, "annotations": [{k: v for k, v in good.items() if k != "caption"}]}))
    with pytest.raises(DataFormatError, match=r"annotations\[0\]: annotation has no 'description'"):
        read_regions(path)


# ---------------------------------------------------------------------------------------------- synthetic masks
def _hue_sat(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = rgb.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = np.where(mx > mn, mx - mn, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return hue, np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)


def test_synthetic_region_masks_match_the_rendered_shapes(world, tmp_path):
    from groundscope.data.vocab import COLOUR_RGB

    rs = read_regions(world / "regions.json")
    coco = json.loads((world / "coco.json").read_text())
    anns = {a["id"]: a for a in coco["annotations"]}
    assert [r.id for r in rs.records] == [a["id"] for a in coco["annotations"]]  # the same objects, same ids
    tested, occluded = 0, 0
    for rec in rs.records:
        ann = anns[rec.id]
        assert rec.description == ann["description"]
        mask = rec.mask()
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)  # tight box
        # The "coloured pixels" of the object: inside its full extent, saturated and of its hue (textures are
        # tints / shades of the same hue; the backgrounds are nearly grey). Skip objects overlapped by another
        # object of the same colour, whose pixels could not be told apart that way.
        colour = ann["attributes"]["colour"]
        fx1, fy1, fx2, fy2 = ann["attributes"]["full_bbox"]
        same = [a["attributes"]["full_bbox"] for a in coco["annotations"] if a["image_id"] == ann["image_id"]
                and a["id"] != rec.id and a["attributes"]["colour"] == colour]
        if any(min(fx2, ox2) > max(fx1, ox1) and min(fy2, oy2) > max(fy1, oy1) for ox1, oy1, ox2, oy2 in same):
            continue
        pixels = np.asarray(Image.open(rec.image).convert("RGB"))
        hue, sat = _hue_sat(pixels)
        want, _ = _hue_sat(np.array(COLOUR_RGB[colour], dtype=np.uint8))
        near = np.minimum(abs(hue - want), 360 - abs(hue - want)) < 15
        coloured = np.zeros_like(mask)
        coloured[fy1:fy2, fx1:fx2] = (near & (sat > 0.3))[fy1:fy2, fx1:fx2]
        iou = (coloured & mask).sum() / (coloured | mask).sum()
        assert iou > 0.95, (rec.id, colour, iou)  # a mask shifted by 2 px scores 0.80-0.96
        tested += 1
        occluded += ann["attributes"]["visible"] < 1
    assert tested >= 12 and occluded >= 3
    # The replay writer (for worlds generated without --regions) gives the same file, byte for byte.
    write_world_regions(world, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (world / "regions.json").read_bytes()
    # ... and refuses a world whose images are not the ones its seed draws.
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="no meta.json"):
        write_world_regions(tmp_path)


def test_synth_cli_regions_flag_and_command(tmp_path):
    from groundscope.cli import app

    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "w"), "--n", "2", "--regions"])
    assert res.exit_code == 0, res.output
    assert "regions.json" in json.loads((tmp_path / "w" / "meta.json").read_text())["files"]
    res = runner.invoke(app, ["synth-regions", str(tmp_path / "w"), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.json").read_bytes() == (tmp_path / "w" / "regions.json").read_bytes()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "w" / "images" / "000001.png")
    res = runner.invoke(app, ["synth-regions", str(tmp_path / "w")])
    assert res.exit_code == 2 and "000001.png differs" in res.output


# ---------------------------------------------------------------------------------------------- base VLM
def test_pretrain_vlm_output_loads_as_an_untrained_dam(base_vlm, world, lm_dir, tmp_path):
    from groundscope.cli import app
    from groundscope.describe import load_dam

    assert not (base_vlm / "context_provider").exists() and (base_vlm / "loss.png").is_file()
    log = json.loads((base_vlm / "train_log.json").read_text())
    assert [r["step"] for r in log["log"]] == [1, 2] and all(math.isfinite(r["loss"]) for r in log["log"])
    with pytest.raises(Exception, match="context_provider"):
        load_dam(base_vlm)
    model = load_dam(base_vlm, from_base_vlm=True)
    assert model.config.image_size == 32 and model.config.feature_layer == -1
    assert all(a.attn_gate.item() == 0 and a.mlp_gate.item() == 0 for a in model.backbone.adapters)
    # the LM now knows DAM's template and the descriptions, and puts <s> first
    tok = model.tokenizer
    rec = read_regions(world / "regions.json").records[0]
    for text in (rec.description, model.config.system):
        assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]
    assert tok("A")["input_ids"][0] == tok.bos_token_id
    # untrained DAM = the base VLM looking at the focal crop
    pixels, _ = model.focal_inputs([str(rec.image)], [rec.mask()])
    with torch.no_grad():
        assert (model.backbone(pixels) - model.backbone.features(pixels[:, 4:7])).abs().max() < 1e-5
    # the command, with its errors
    out = tmp_path / "cli_vlm"
    args = ["pretrain-vlm", "--data", str(world / "groundingcap.jsonl"), "--lm", str(lm_dir), "--out", str(out),
            "--steps", "1", "--batch-size", "2", "--image-size", "32", "--patch", "8", "--hidden", "32",
            "--layers", "1", "--heads", "2", "--no-captions"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert load_dam(out, from_base_vlm=True).config.image_size == 32
    assert runner.invoke(app, args).exit_code == 2  # would overwrite
    res = runner.invoke(app, args[:-1] + ["--overwrite", "--lm", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "pretrain-lm" in res.output
    res = runner.invoke(app, args + ["--overwrite", "--position-init", "learned"])
    assert res.exit_code == 2 and "--position-init must be random or sincos" in res.output
    res = runner.invoke(app, args + ["--overwrite", "--crop-mode", "pad"])
    assert res.exit_code == 2 and "--crop-mode must be clamp or square" in res.output
    res = runner.invoke(app, args + ["--overwrite", "--position-init", "sincos"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "train_log.json").read_text())["config"]["position_init"] == "sincos"


# ---------------------------------------------------------------------------------------------- DAM training
def test_three_steps_train_only_the_dam_parts(base_vlm, world, val_world, tmp_path):
    from groundscope.describe import load_dam
    from groundscope.train.dam import DamTrainer

    cfg = config_from_dict(_dam_config(base_vlm, world, tmp_path / "run", data={"val": {
        "path": str(val_world / "regions.json")}}, eval={"max_images": 1}, dam={"eval_samples": 1,
                                                                               "max_new_tokens": 4}))
    trainer = DamTrainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.fit()
    losses = _train_losses(tmp_path / "run" / "log.jsonl")
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    for n in before:
        if n.startswith(("backbone.vision.", "llm.")):
            assert n not in changed, n  # the base VLM's weights are bit-identical
    assert any(n.startswith("backbone.mask_embed.") for n in changed)
    assert any(n.startswith("projector.") for n in changed)
    assert {f"backbone.adapters.{i}.{g}" for i in range(2) for g in ("attn_gate", "mlp_gate")} <= changed
    assert not trainer.model.llm.training and not trainer.model.backbone.vision.training  # frozen: eval mode
    # evaluation: loss on the validation regions and generated samples
    evals = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 1 and evals[0]["final"] and math.isfinite(evals[0]["val_loss"])
    sample = json.loads((tmp_path / "run" / "eval" / "step_000003" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["reference"] and isinstance(sample["generated"], str)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    # the exported folder is a DAM that load_dam reads, with the trained weights
    exported = load_dam(summary["model_dir"])
    assert (Path(summary["model_dir"]) / "context_provider").is_dir()
    for n, p in exported.named_parameters():
        assert torch.equal(p, trainer.model.get_parameter(n)), n


def test_lora_trains_adapters_and_export_merges_them(base_vlm, world, tmp_path):
    pytest.importorskip("peft")
    from groundscope.describe import load_dam
    from groundscope.train.dam import DamTrainer

    raw = _dam_config(base_vlm, world, tmp_path / "lora", model={"freeze": ["backbone.vision"]},
                      dam={"lora": {"r": 4, "alpha": 8}}, train={"max_steps": 2, "save_dtype": "float32"})
    trainer = DamTrainer(config_from_dict(raw))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.fit()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_" in n for n in changed)
    assert not any(n.startswith("llm.") and "lora_" not in n for n in changed)
    rec = read_regions(world / "regions.json").records[1]
    exported = load_dam(summary["model_dir"])
    assert not any("lora" in n for n, _ in exported.named_parameters())
    model = trainer.model.eval()
    pixels, frames = model.focal_inputs([str(rec.image)], [rec.mask()])
    batch = model.tokenize(frames, [rec.description])
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], pixel_values=pixels).logits
        b = exported(batch["input_ids"], batch["attention_mask"], pixel_values=pixels).logits
    assert (a - b).abs().max() < 1e-4
    raw["model"]["freeze"] = ["backbone.vision", "llm"]
    with pytest.raises(ConfigError, match="freeze the dam.lora adapters"):
        config_from_dict(raw)


def test_resume_after_sigint_equals_an_uninterrupted_run(base_vlm, world, tmp_path):
    from groundscope.train.dam import DamTrainer

    def cfg(out):
        # accumulation, a warm-up + cosine schedule, epochs turning (22 regions, 4 per step): what a resume
        # could get wrong; the projector trains too.
        return config_from_dict(_dam_config(
            base_vlm, world, out, optim={"lr": 3e-3}, schedule={"kind": "cosine", "warmup_steps": 2},
            train={"max_steps": 6, "batch_size": 2, "accumulate": 2, "checkpoint_every": 0, "keep_checkpoints": 0},
            dam={"box_prob": 0.5}))  # box draws that depend on the epoch, too

    n_regions = len(read_regions(world / "regions.json"))
    straight = DamTrainer(cfg(tmp_path / "a")).fit()
    assert straight["step"] == 6

    def interrupt_at_3(trainer, record):
        if record["step"] == 3:
            trainer._on_sigint(signal.SIGINT, None)  # what Ctrl-C calls

    first = DamTrainer(cfg(tmp_path / "b")).fit(on_step=interrupt_at_3)
    assert first["interrupted"] and first["step"] == 3
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert ck["step"] == 3 and ck["epoch"] * math.ceil(n_regions / 2) + ck["batch"] == 6
    with pytest.raises(Exception, match="already holds a run"):
        DamTrainer(cfg(tmp_path / "b")).fit()
    resumed = DamTrainer(cfg(tmp_path / "b")).fit(resume=True)
    assert resumed["step"] == 6 and not resumed["interrupted"]

    a = _train_losses(tmp_path / "a" / "log.jsonl")
    b = _train_losses(tmp_path / "b" / "log.jsonl")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    assert len(set(a.values())) == 6
    # the final states (weights and optimizer moments) are the same
    sa = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    sb = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (sa["epoch"], sa["batch"]) == (sb["epoch"], sb["batch"])
    for k, v in sa["model"].items():
        assert torch.allclose(v, sb["model"][k], atol=1e-6), k
    for pid, st in sa["optimizer"]["state"].items():
        assert torch.allclose(st["exp_avg"], sb["optimizer"]["state"][pid]["exp_avg"], atol=1e-7)


def test_box_prob_gives_regions_as_their_filled_boxes(base_vlm, world):
    from groundscope.describe import RegionError, filled_box, focal_pixels, focal_prompt, load_dam
    from groundscope.train.dam import RegionTrainDataset

    m = np.zeros((5, 6), bool)
    m[1, 2] = m[3, 4] = True
    box = filled_box(m)
    assert box.sum() == 9 and box[1:4, 2:5].all()
    with pytest.raises(RegionError, match="empty"):
        filled_box(np.zeros((4, 4), bool), name="region 7")

    records = read_regions(world / "regions.json").records
    config = load_dam(base_vlm, from_base_vlm=True).config
    i = next(k for k, r in enumerate(records) if not np.array_equal(filled_box(r.mask()), r.mask()))
    rec = records[i]
    expected = focal_pixels(focal_prompt(rec.image, filled_box(rec.mask()), config.min_crop), config.image_size,
                            config.image_mean, config.image_std, config.resample, config.image_aspect_ratio)
    as_mask = RegionTrainDataset(records, config)[i].pixel_values
    as_box = RegionTrainDataset(records, config, box_prob=1.0)[i].pixel_values
    assert torch.equal(as_box, expected) and not torch.equal(as_mask, as_box)
    assert torch.equal(as_mask[:3], as_box[:3]) and torch.equal(as_mask[4:7], as_box[4:7])  # the same RGB

    # which regions get their box: a function of (seed, epoch, index), about box_prob of them
    half = RegionTrainDataset(records, config, box_prob=0.5, seed=0)
    epoch0 = [half.as_box(k) for k in range(1000)]
    half.set_epoch(1)
    epoch1 = [half.as_box(k) for k in range(1000)]
    again = RegionTrainDataset(records, config, box_prob=0.5, seed=0)
    again.set_epoch(1)
    assert epoch1 == [again.as_box(k) for k in range(1000)]
    assert epoch0 != epoch1 and 420 < sum(epoch0) < 580 and 420 < sum(epoch1) < 580
    assert epoch0 != [RegionTrainDataset(records, config, box_prob=0.5, seed=1).as_box(k) for k in range(1000)]


def test_point_prob_gives_regions_as_one_click_inside_them(base_vlm, world):
    """`dam.point_prob`: a share of the regions becomes the disc a one-click points prompt sends, centred on a pixel
    of the region's own mask; the box draws stay those of box_prob alone; shares over 1 are refused."""
    from groundscope.describe import RegionError, focal_pixels, focal_prompt, load_dam, region_to_mask
    from groundscope.train.dam import RegionTrainDataset, click_mask

    m = np.zeros((40, 50), bool)
    m[10:20, 30:45] = True
    for seed in range(20):
        disc = click_mask(m, np.random.default_rng(seed))
        ys, xs = np.nonzero(disc)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        assert m[int(cy), int(cx)]  # the disc's centre is a pixel of the region
        assert np.array_equal(disc, region_to_mask(m.shape, points=[(cx, cy)]))  # exactly what --points sends
    with pytest.raises(RegionError, match="region 3: the mask is empty"):
        click_mask(np.zeros((4, 4), bool), np.random.default_rng(0), name="region 3")

    records = read_regions(world / "regions.json").records
    config = load_dam(base_vlm, from_base_vlm=True).config
    i = 0
    clicked = RegionTrainDataset(records, config, point_prob=1.0)
    assert clicked.prompt_kind(i) == "point"
    rng = np.random.default_rng([0, 0, i])
    rng.random()  # the kind's draw; the pixel is the next one
    expected = focal_pixels(focal_prompt(records[i].image, click_mask(records[i].mask(), rng), config.min_crop),
                            config.image_size, config.image_mean, config.image_std, config.resample,
                            config.image_aspect_ratio)
    assert torch.equal(clicked[i].pixel_values, expected)

    boxes_only = RegionTrainDataset(records, config, box_prob=0.3, seed=0)
    both = RegionTrainDataset(records, config, box_prob=0.3, point_prob=0.3, seed=0)
    kinds = [both.prompt_kind(k) for k in range(1000)]
    assert [k == "box" for k in kinds] == [boxes_only.as_box(k) for k in range(1000)]
    assert 230 < kinds.count("point") < 370 and 230 < kinds.count("box") < 370
    with pytest.raises(ValueError, match="add up to at most 1"):
        RegionTrainDataset(records, config, box_prob=0.6, point_prob=0.5)


def test_dam_config_and_cli(base_vlm, world, tmp_path):
    from groundscope.cli import app

    raw = _dam_config(base_vlm, world, tmp_path / "unused", train={"max_steps": 1})
    path = tmp_path / "dam.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "cli"), "--set", "optim.lr=2e-3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "model" / "context_provider" / "model.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["task"] == "dam" and saved["optim"]["lr"] == 2e-3 and "dam" in saved
    res = runner.invoke(app, ["train", str(path), "--set", "model.freeze=[backbone.visoin]"])
    assert res.exit_code == 2 and "'backbone.visoin' matches no parameter" in res.output
    res = runner.invoke(app, ["train", str(path), "--set", "dam.max_text_tokens=20"])
    assert res.exit_code == 2 and "leaves no room for a description" in res.output
    for change, pattern in [({"task": "detect", "dam": {"eval_samples": 1}}, "only applies to task: dam"),
                            ({"data": {"train": {"path": "x.json", "format": "coco"}}}, "format regions or auto"),
                            ({"caption": {"enabled": True, "llm": "x"}}, "caption.enabled"),
                            ({"dam": {"prompt": "Describe."}}, "exactly one <image>"),
                            ({"dam": {"box_prob": 1.5}}, "box_prob"),
                            ({"dam": {"box_prob": 0.6, "point_prob": 0.5}}, "add up to 1.1")]:
        with pytest.raises(ConfigError, match=pattern):
            config_from_dict({**raw, **change})


def test_vision_pretraining_learns_a_fixed_batch_and_feeds_the_base_vlm(world, lm_dir, tmp_path):
    """Stage 0 (`--vision-steps`): the tower alone is trained on the regions' colour and shape; on a batch that
    holds the whole (tiny) world its accuracy rises, and pretrain-vlm records the stage in its log."""
    from groundscope.train.base_vlm import build_base_vlm, pretrain_base_vlm, pretrain_vision, vlm_samples

    samples = vlm_samples(world / "groundingcap.jsonl")
    regions = [s for s in samples if s.box is not None]
    assert all(s.category for s in regions)
    model, _ = build_base_vlm(lm_dir, [s.text for s in samples], **TINY_VLM)
    before = {k: v.clone() for k, v in model.backbone.vision.state_dict().items()}
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    log = pretrain_vision(model, samples, 30, batch_size=len(regions), lr=3e-3, val_samples=samples, eval_every=30)
    train = [r for r in log if r["type"] == "vision"]
    assert sum(train[-1]["accuracy"]) > sum(train[0]["accuracy"]) and train[-1]["loss"] < train[0]["loss"]
    # the validation row scores the same regions unjittered: one accuracy per slot (colour, shape)
    assert log[-1]["type"] == "vision_val" and len(log[-1]["accuracy"]) == 2
    after = model.backbone.vision.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(llm_before[k], v) for k, v in model.llm.state_dict().items())  # the LM is untouched

    out = tmp_path / "vlm"
    summary = pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out, steps=1, batch_size=4, progress=False,
                                vision_steps=2, vision_batch_size=4, vision_jitter=0.3, **TINY_VLM)
    rows = json.loads((out / "train_log.json").read_text())["log"]
    assert [r["type"] for r in rows[:2]] == ["vision", "vision"] and summary["vision_steps"] == 2
    assert len(summary["vision_last_accuracy"]) == 2 and summary["vision_val_accuracy"] is None

    # --vision-lr-mult 0: the LLaVA stage leaves the tower as it was built (same seed, same vocabulary)
    from groundscope.describe.model import load_dam

    out0 = tmp_path / "vlm0"
    pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out0, steps=2, batch_size=4, progress=False,
                      vision_lr_mult=0.0, **TINY_VLM)
    fresh, _ = build_base_vlm(lm_dir, [s.text for s in samples], **TINY_VLM)
    saved = load_dam(out0, from_base_vlm=True)
    tower = saved.backbone.vision.state_dict()
    assert all(torch.equal(v, tower[k]) for k, v in fresh.backbone.vision.state_dict().items())
    assert not all(torch.equal(v, saved.projector.state_dict()[k])
                   for k, v in fresh.projector.state_dict().items())  # the projector did train


def test_sincos_position_init_by_hand(lm_dir, world):
    """`--position-init sincos`: the tower's position embedding starts as the token grid's 2-D sine-cosine
    embedding (columns in the first half of the channels, rows in the second), checked on a 2x2 grid by hand."""
    import math

    from groundscope.train.base_vlm import build_base_vlm, sincos_2d, vlm_samples

    s1, c1 = math.sin(1.0), math.cos(1.0)
    # width 4 -> one frequency (1.0); tokens row-major: (row, col) = (0, 0), (0, 1), (1, 0), (1, 1)
    expected = torch.tensor([[0, 1, 0, 1], [s1, c1, 0, 1], [0, 1, s1, c1], [s1, c1, s1, c1]])
    assert torch.allclose(sincos_2d(2, 4), expected, atol=1e-7)
    table = sincos_2d(4, 32)
    assert table.shape == (16, 32) and float(table.abs().max()) <= 1.0
    assert len({tuple(row.tolist()) for row in table}) == 16  # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 6)

    texts = [s.text for s in vlm_samples(world / "groundingcap.jsonl")]
    model, _ = build_base_vlm(lm_dir, texts, position_init="sincos", **TINY_VLM)
    grid = TINY_VLM["image_size"] // TINY_VLM["patch_size"]
    weight = model.backbone.vision.embeddings.position_embedding.weight
    assert torch.equal(weight.detach(), sincos_2d(grid, TINY_VLM["hidden"]))
    assert weight.requires_grad  # an initialisation, still learnt
    with pytest.raises(ValueError, match="'random' or 'sincos'"):
        build_base_vlm(lm_dir, texts, position_init="learned", **TINY_VLM)


def test_category_factors_and_box_jitter():
    """Vision pretraining's labels: one slot per category word when all names have as many words, else one;
    a jittered box stays inside the image, at least 2 px, and moves by at most the stated share."""
    import numpy as np

    from groundscope.train.base_vlm import category_factors, jitter_box
    from groundscope.train.vision_pretrain import _slot_labels

    slots = category_factors(["red circle", "blue star", "red star"])
    assert slots == [["blue", "red"], ["circle", "star"]]
    assert _slot_labels(["blue circle", "green star", "dark red star"], slots).tolist() == [
        [0, 0], [-100, 1], [-100, -100]]
    assert category_factors(["red circle", "dark red star"]) == [["dark red star", "red circle"]]
    rng = np.random.default_rng(0)
    for _ in range(200):
        x1, y1, x2, y2 = jitter_box((10, 20, 50, 40), (100, 60), 0.2, rng)
        assert 0 <= x1 < x2 <= 60 and 0 <= y1 < y2 <= 100 and x2 - x1 >= 2 and y2 - y1 >= 2
        assert abs((x1 + x2) / 2 - 30) <= 0.1 * 40 * 1.0001 + 1e-9 or x1 == 0 or x2 == 60


def test_flip_half_mirrors_a_random_half_of_the_batch(world, lm_dir, tmp_path):
    """`--vision-flip`: each crop is either itself or its exact left-right mirror, about half are mirrored, the
    draw is reproducible from the seed, and pretrain-vlm records the option."""
    from groundscope.train.base_vlm import flip_half, pretrain_base_vlm

    pixels = torch.arange(400 * 2 * 3 * 5, dtype=torch.float32).reshape(400, 2, 3, 5)
    out = flip_half(pixels, torch.Generator().manual_seed(0))
    same = (out == pixels).flatten(1).all(1)
    mirrored = (out == pixels.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())  # every crop is one or the other (no 1-px-wide crop is both here)
    assert 160 < int(mirrored.sum()) < 240
    assert torch.equal(out, flip_half(pixels, torch.Generator().manual_seed(0)))
    assert torch.equal(out[mirrored][:, 0, 0], pixels[mirrored][:, 0, 0].flip(-1))  # by hand: columns reversed

    summary = pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, tmp_path / "vlm", steps=1, batch_size=4,
                                progress=False, vision_steps=2, vision_batch_size=4, vision_flip=True, **TINY_VLM)
    assert summary["vision_steps"] == 2
    assert json.loads((tmp_path / "vlm" / "train_log.json").read_text())["config"]["vision_flip"] is True


def test_square_crop_mode_travels_from_the_base_vlm_to_dam_training_and_inference(world, lm_dir, tmp_path):
    """`pretrain-vlm --crop-mode square`: the base VLM's config keeps the mode, so the DAM trained from it, its
    training data and its inference all cut the centred, padded square crop; an unknown mode is refused."""
    from groundscope.describe import DamError, focal_crop, focal_pixels, focal_prompt, load_dam
    from groundscope.describe.model import DamConfig
    from groundscope.train.base_vlm import pretrain_base_vlm
    from groundscope.train.dam import RegionTrainDataset

    out = tmp_path / "vlm"
    pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out, steps=1, batch_size=4, progress=False,
                      crop_mode="square", vision_steps=1, vision_batch_size=4, **TINY_VLM)
    assert json.loads((out / "train_log.json").read_text())["config"]["crop_mode"] == "square"
    model = load_dam(out, from_base_vlm=True)
    c = model.config
    assert c.crop_mode == "square"
    records = read_regions(world / "regions.json").records

    def past_border(r) -> bool:
        c, (h, w) = focal_crop(r.mask(), mode="square"), r.mask().shape
        return c.x0 < 0 or c.y0 < 0 or c.x1 > w or c.y1 > h

    r = next(r for r in records if past_border(r))  # a region near the border: its square crop is padded
    expected = focal_pixels(focal_prompt(r.image, r.mask(), c.min_crop, mode="square"), c.image_size, c.image_mean,
                            c.image_std, c.resample, c.image_aspect_ratio)
    clamped = focal_pixels(focal_prompt(r.image, r.mask(), c.min_crop), c.image_size, c.image_mean, c.image_std,
                           c.resample, c.image_aspect_ratio)
    assert not torch.equal(expected, clamped)
    assert torch.equal(RegionTrainDataset([r], c)[0].pixel_values, expected)
    pixels, frames = model.focal_inputs([str(r.image)], [r.mask()])  # what describe / generate feed the model
    assert torch.equal(pixels[0], expected) and frames == [1]
    with pytest.raises(DamError, match="crop_mode"):
        DamConfig(crop_mode="pad")


def test_attribute_heads_and_a_tower_started_from_another_base_vlm(world, lm_dir, tmp_path):
    """`--vision-attributes texture`: the synthetic world's GroundingCap regions carry their attributes, the vision
    stage gets one head more (labels from the attribute, -100 where a region lacks it), an unknown attribute is an
    error naming the ones there; `--vision-init` starts the tower from another base VLM's tower, exactly."""
    from groundscope.describe.model import load_dam
    from groundscope.train.base_vlm import VlmSample, attribute_slots, pretrain_base_vlm, vlm_samples
    from groundscope.train.vision_pretrain import _attribute_labels

    samples = [s for s in vlm_samples(world / "groundingcap.jsonl") if s.box is not None]
    assert all(s.attributes["texture"] in ("plain", "striped", "dotted", "checkered") for s in samples)
    assert all(s.attributes["colour"] == s.category.split()[0] for s in samples)
    by_hand = [VlmSample(Path("a.png"), (0, 0, 4, 4), "x", "red circle", {"texture": "dotted"}),
               VlmSample(Path("a.png"), (0, 0, 4, 4), "x", "red circle", {}),
               VlmSample(Path("a.png"), (0, 0, 4, 4), "x", "red circle", {"texture": "plain"})]
    slots = attribute_slots(by_hand, ["texture"])
    assert slots == [["dotted", "plain"]]
    assert _attribute_labels(by_hand, ["texture"], slots).tolist() == [[0], [-100], [1]]
    with pytest.raises(ValueError, match="no region carries the attribute 'shine'.*colour.*texture"):
        attribute_slots(samples, ["shine"])

    out = tmp_path / "vlm_tex"
    summary = pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out, steps=1, batch_size=4, progress=False,
                                vision_steps=2, vision_batch_size=4, vision_attributes=["texture"],
                                vision_val=world / "groundingcap.jsonl", vision_lr_mult=0.0, **TINY_VLM)
    assert len(summary["vision_last_accuracy"]) == 3 and len(summary["vision_val_accuracy"]) == 3
    settings = json.loads((out / "train_log.json").read_text())["config"]
    assert settings["vision_attributes"] == ["texture"] and settings["vision_init"] is None

    # --vision-init with no vision steps and a frozen tower in the LLaVA stage: the tower is the source's, exactly
    out2 = tmp_path / "vlm_init"
    pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out2, steps=1, batch_size=4, progress=False,
                      vision_init=out, vision_lr_mult=0.0, seed=5, **TINY_VLM)
    source = load_dam(out, from_base_vlm=True).backbone.vision.state_dict()
    copied = load_dam(out2, from_base_vlm=True).backbone.vision.state_dict()
    assert all(torch.equal(v, copied[k]) for k, v in source.items())
    with pytest.raises(ValueError, match="does not fit this model.*--hidden"):
        pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, tmp_path / "vlm_bad", steps=1, batch_size=4,
                          progress=False, vision_init=out, **{**TINY_VLM, "hidden": TINY_VLM["hidden"] * 2})

    # a tower of another input size: every tensor copied but the position embedding, which is resized (FixRes)
    from groundscope.train.base_vlm import resize_position_grid

    out3 = tmp_path / "vlm_48px"
    pretrain_base_vlm(world / "groundingcap.jsonl", lm_dir, out3, steps=1, batch_size=4, progress=False,
                      vision_init=out, vision_lr_mult=0.0, **{**TINY_VLM, "image_size": 48})
    larger = load_dam(out3, from_base_vlm=True).backbone.vision.state_dict()
    key = "embeddings.position_embedding.weight"
    assert larger[key].shape == (36, TINY_VLM["hidden"])  # 48 px / patch 8 = a 6x6 grid (the source's is 4x4)
    assert torch.allclose(larger[key], resize_position_grid(source[key], 6))
    assert all(torch.equal(v, larger[k]) for k, v in source.items() if k != key)


def test_resize_position_grid_by_hand():
    """The position grid resized as an image: the same size is a copy, a constant grid stays constant, a grid
    varying along columns only still does after resizing, and a non-square table is an error."""
    from groundscope.train.base_vlm import resize_position_grid

    table = torch.randn(16, 8)
    assert torch.equal(resize_position_grid(table, 4), table)
    assert torch.allclose(resize_position_grid(torch.full((9, 5), 0.25), 6), torch.full((36, 5), 0.25))
    cols = torch.arange(4.0).repeat(4)[:, None] * torch.ones(1, 3)  # value = column index, rows alike
    grid = resize_position_grid(cols, 8).reshape(8, 8, 3)
    assert torch.allclose(grid, grid[:1].expand(8, 8, 3), atol=1e-6)  # still the same in every row
    assert bool((grid[0, 1:, 0] >= grid[0, :-1, 0] - 1e-6).all())  # and rising left to right
    with pytest.raises(ValueError, match="not a square grid"):
        resize_position_grid(torch.zeros(12, 4), 4)
