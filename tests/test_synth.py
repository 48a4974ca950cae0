"""The synthetic grounding world: determinism, geometry, open-vocabulary split, texts, expressions, CLI."""

from __future__ import annotations

import colorsys
import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from groundscope.data import read_coco, read_groundingcap, read_odvg, read_refexp
from groundscope.cli.data import register
from groundscope.data.expressions import parse, resolve
from groundscope.data.scene import SceneObject
from groundscope.data.synth import IMAGE_SIDE, MAX_OBJECTS, MIN_BOX_SIDE, generate_world
from groundscope.data.vocab import (
    COLOUR_NAMES,
    COLOUR_RGB,
    NOVEL_COMBOS,
    SHAPES,
    TEST_SYNONYMS,
    base_classes,
    novel_classes,
)

N = 24


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    generate_world(out, N, seed=11, split="train")
    return out


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("test")
    generate_world(out, N, seed=11, split="test")
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, 6, seed=5, split="test")
    generate_world(b, 6, seed=5, split="test")
    generate_world(c, 6, seed=6, split="test")
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys() and len(fa) == 6 + 8  # images + 8 annotation/meta files
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]
    assert fa["images/000000.png"] != fc["images/000000.png"]
    assert fa["coco_all.json"] != fc["coco_all.json"]


def test_train_and_test_differ_for_the_same_seed(train_dir, test_dir):
    assert (train_dir / "images/000000.png").read_bytes() != (test_dir / "images/000000.png").read_bytes()


def test_summary_counts_match_files(tmp_path):
    summary = generate_world(tmp_path, 5, seed=2, split="train")
    coco = read_coco(tmp_path / "coco.json")
    assert summary["images"] == len(coco.images) == 5
    assert summary["objects"] == sum(len(im.instances) for im in coco.images)
    assert summary["refexps"] == len(read_refexp(tmp_path / "refexp.json").refs)
    assert summary["novel_objects"] == 0
    assert {"coco.json", "odvg_det.jsonl", "label_map.json", "odvg_grounding.jsonl", "groundingcap.jsonl",
            "refexp.json", "meta.json"} <= set(summary["files"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="split"):
        generate_world(tmp_path, 2, split="val")
    with pytest.raises(ValueError, match="n must be"):
        generate_world(tmp_path, 0)


# ----------------------------------------------------------------------------------------------- geometry


def _hue_match(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Pixels (H, W, 3) whose hue is within 15 degrees of ``rgb``'s and that are clearly coloured."""
    target_h = colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0]
    p = pixels.astype(np.float32) / 255
    mx, mn = p.max(-1), p.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV"), dtype=np.float32)
    dh = np.abs(hsv[..., 0] / 255 - target_h)
    dh = np.minimum(dh, 1 - dh)
    return (dh < 15 / 360) & (sat > 0.2)


def test_images_objects_and_boxes(train_dir, test_dir):
    for root, name in ((train_dir, "coco.json"), (test_dir, "coco_all.json")):
        coco = read_coco(root / name)
        assert len(coco.images) == N
        for im in coco.images:
            pixels = np.asarray(Image.open(root / im.filename).convert("RGB"))
            assert pixels.shape == (im.height, im.width, 3)
            assert IMAGE_SIDE[0] <= im.width <= IMAGE_SIDE[1] and IMAGE_SIDE[0] <= im.height <= IMAGE_SIDE[1]
            assert 1 <= len(im.instances) <= MAX_OBJECTS
            for inst in im.instances:
                x1, y1, x2, y2 = inst.bbox
                assert 0 <= x1 < x2 <= im.width and 0 <= y1 < y2 <= im.height
                assert min(x2 - x1, y2 - y1) >= MIN_BOX_SIDE
                assert inst.attributes["visible"] >= 0.75
                fx1, fy1, fx2, fy2 = inst.attributes["full_bbox"]
                assert fx1 <= x1 and fy1 <= y1 and x2 <= fx2 and y2 <= fy2  # visible box inside full extent
                # The box holds the object's colour, and its colour reaches every edge (the box is tight).
                match = _hue_match(pixels[int(y1):int(y2), int(x1):int(x2)], COLOUR_RGB[inst.attributes["colour"]])
                assert match.mean() > 0.25, (im.filename, inst.category, match.mean())
                band = 2
                assert match[:band].any() and match[-band:].any() and match[:, :band].any() and match[:, -band:].any()


def test_world_uses_the_whole_vocabulary(tmp_path):
    generate_world(tmp_path, 60, seed=0, split="test")
    attrs = [i.attributes for im in read_coco(tmp_path / "coco_all.json").images for i in im.instances]
    assert {a["colour"] for a in attrs} == set(COLOUR_NAMES)
    assert {a["shape"] for a in attrs} == set(SHAPES)
    assert {a["size"] for a in attrs} == {"small", "medium", "large"}
    assert {a["texture"] for a in attrs} == {"plain", "striped", "dotted", "checkered"}
    assert any(a["visible"] < 1.0 for a in attrs)  # some occlusion happens
    novel_share = np.mean([a["novel"] for a in attrs])
    assert 0.1 < novel_share < 0.5


# ----------------------------------------------------------------------------------------------- open vocabulary


def _all_text(root: Path, skip: tuple[str, ...] = ()) -> str:
    return "\n".join(p.read_text() for p in sorted(root.glob("*.json*")) if p.name not in skip)


def test_novel_combos_and_synonyms_never_in_train(train_dir):
    coco = read_coco(train_dir / "coco.json")
    assert coco.categories == base_classes()
    for im in coco.images:
        for inst in im.instances:
            assert (inst.attributes["colour"], inst.attributes["shape"]) not in NOVEL_COMBOS
    text = _all_text(train_dir).lower()
    for name in novel_classes():
        assert name not in text, name
    for synonym in TEST_SYNONYMS.values():
        assert not re.search(rf"\b{synonym}\b", text), synonym
    label_map = json.loads((train_dir / "label_map.json").read_text())
    assert label_map == {str(k): name for k, name in enumerate(base_classes())}


def test_test_split_files(test_dir):
    every = read_coco(test_dir / "coco_all.json")
    base = read_coco(test_dir / "coco_base.json")
    novel = read_coco(test_dir / "coco_novel.json")
    syn = read_coco(test_dir / "coco_synonyms.json")
    assert base.categories == base_classes() and base.category_ids == list(range(1, 57))
    assert novel.categories == novel_classes() and novel.category_ids == list(range(57, 65))
    assert every.categories == base_classes() + novel_classes()
    assert syn.category_ids == base.category_ids
    for name, canonical in zip(syn.categories, base.categories, strict=True):
        colour, shape = canonical.split(" ", 1)
        assert name == f"{TEST_SYNONYMS[colour]} {shape}"

    def ann_ids(ds):
        return {(im.image_id, i.id, i.category) for im in ds.images for i in im.instances}

    all_ids = {(a, i) for a, i, _ in ann_ids(every)}
    base_ids = {(a, i) for a, i, _ in ann_ids(base)}
    novel_ids = {(a, i) for a, i, _ in ann_ids(novel)}
    assert novel_ids and base_ids and not (base_ids & novel_ids) and base_ids | novel_ids == all_ids
    assert {(a, i) for a, i, _ in ann_ids(syn)} == base_ids
    assert {c for _, _, c in ann_ids(novel)} <= set(novel_classes())
    assert len(base.images) == len(novel.images) == len(syn.images) == N  # every image in every file
    # Synonyms only in coco_synonyms.json.
    text = _all_text(test_dir, skip=("coco_synonyms.json", "meta.json")).lower()
    for synonym in TEST_SYNONYMS.values():
        assert not re.search(rf"\b{synonym}\b", text), synonym


# ----------------------------------------------------------------------------------------------- texts


def _scene(images_instances) -> list[SceneObject]:
    return [SceneObject(colour=i.attributes["colour"], shape=i.attributes["shape"], size=i.attributes["size"],
                        texture=i.attributes["texture"], side=i.attributes["side"], box=i.bbox,
                        full_box=tuple(i.attributes["full_bbox"])) for i in images_instances]


@pytest.mark.parametrize("split,coco_name", [("train", "coco.json"), ("test", "coco_all.json")])
def test_referring_expressions_are_unique(split, coco_name, train_dir, test_dir):
    root = train_dir if split == "train" else test_dir
    by_id = {im.image_id: im for im in read_coco(root / coco_name).images}
    refs = read_refexp(root / "refexp.json").refs
    assert len(refs) >= N
    kinds = set()
    for ref in refs:
        image = by_id[ref.image_id]
        expr = parse(ref.expression)
        objects = _scene(image.instances)
        target = [k for k, inst in enumerate(image.instances) if inst.id == ref.ann_id]
        assert resolve(expr, objects) == target, ref.expression
        assert image.instances[target[0]].bbox == ref.bbox
        a, b = ref.tokens_positive[0]
        assert ref.expression[a:b] == expr.target.text()
        kinds.add("relation" if expr.relation else "superlative" if expr.target.superlative else
                  "attribute" if expr.target.size is None and expr.target.texture is None else "detailed")
    assert kinds == {"relation", "superlative", "attribute", "detailed"}


def test_captions_phrases_and_descriptions(train_dir):
    coco = read_coco(train_dir / "coco.json")
    capset = read_groundingcap(train_dir / "groundingcap.jsonl")
    grounding = read_odvg(train_dir / "odvg_grounding.jsonl")
    for im, cap, gr in zip(coco.images, capset.images, grounding.images, strict=True):
        assert cap.long_caption == im.long_caption and gr.caption == im.caption
        for inst, region in zip(im.instances, gr.instances, strict=True):
            a = inst.attributes
            (s, e), = inst.tokens_positive
            assert im.caption[s:e] == inst.phrase == region.phrase
            assert inst.phrase.endswith(f"{a['colour']} {a['shape']}") and a["size"] in inst.phrase
            assert f"{a['size']} {a['colour']} {a['shape']}" in im.long_caption
            texture = "plain fill" if a["texture"] == "plain" else f"{a['texture']} pattern"
            assert inst.description.startswith(f"A {a['size']} {a['colour']} {a['shape']} with a {texture}")
            assert region.description == inst.description
        count = len(im.instances)
        assert f"image of {['', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight'][count]} object" in \
            im.long_caption


# ----------------------------------------------------------------------------------------------- CLI


def test_synth_cli_writes_parseable_files(tmp_path):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--n", "3", "--seed", "4", "--split",
                                      "train"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 images" in result.output
    assert len(read_coco(tmp_path / "coco.json").images) == 3
    assert len(read_odvg(tmp_path / "odvg_det.jsonl", tmp_path / "label_map.json").images) == 3
    assert len(read_groundingcap(tmp_path / "groundingcap.jsonl").images) == 3
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "t"), "--n", "2", "--split", "val"])
    assert result.exit_code == 2
