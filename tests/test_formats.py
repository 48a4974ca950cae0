"""Annotation formats: exact re-writes, cross-format round trips, malformed records, conversion CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from groundscope.data import (
    DataFormatError,
    Dataset,
    ImageRecord,
    Instance,
    convert,
    infer_format,
    read_coco,
    read_groundingcap,
    read_label_map,
    read_odvg,
    read_refexp,
    write_coco,
    write_groundingcap,
    write_odvg_detection,
    write_odvg_grounding,
    write_refexp,
)
from groundscope.cli.data import register
from groundscope.data.records import build_caption
from groundscope.data.synth import generate_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, 10, seed=3, split="train")
    return out


def _boxes_by_image(ds: Dataset) -> dict[str, list[tuple]]:
    return {im.filename: sorted((tuple(i.bbox), ds.categories[i.label] if i.label is not None else i.category)
                                for i in im.instances) for im in ds.images}


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


# ----------------------------------------------------------------------------------------------- exact re-writes


def test_rewriting_each_generated_file_gives_the_same_bytes(world, tmp_path):
    write_coco(tmp_path / "coco.json", read_coco(world / "coco.json"))
    ds = read_odvg(world / "odvg_det.jsonl", world / "label_map.json")
    write_odvg_detection(tmp_path / "odvg_det.jsonl", ds, tmp_path / "label_map.json")
    write_odvg_grounding(tmp_path / "odvg_grounding.jsonl", read_odvg(world / "odvg_grounding.jsonl"))
    write_groundingcap(tmp_path / "groundingcap.jsonl", read_groundingcap(world / "groundingcap.jsonl"))
    write_refexp(tmp_path / "refexp.json", read_refexp(world / "refexp.json"), dataset_name="synth-train")
    for name in ("coco.json", "odvg_det.jsonl", "label_map.json", "odvg_grounding.jsonl", "groundingcap.jsonl",
                 "refexp.json"):
        assert (tmp_path / name).read_bytes() == (world / name).read_bytes(), name


def test_coco_boxes_are_xywh_on_disk_and_xyxy_in_python(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.png", "height": 100, "width": 200}],
        "annotations": [{"id": 9, "image_id": 5, "category_id": 3, "bbox": [10, 20, 30, 40]}],
        "categories": [{"id": 3, "name": "red circle"}]}))
    ds = read_coco(path)
    inst = ds.images[0].instances[0]
    assert inst.bbox == (10, 20, 40, 60) and inst.category == "red circle" and inst.id == 9
    write_coco(tmp_path / "out.json", ds)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["annotations"][0]["bbox"] == [10, 20, 30, 40] and out["annotations"][0]["area"] == 1200
    assert out["categories"] == [{"id": 3, "name": "red circle"}] and out["images"][0]["id"] == 5


# ----------------------------------------------------------------------------------------------- cross-format


def test_coco_to_odvg_detection_and_back(world, tmp_path):
    summary = convert(world / "coco.json", tmp_path / "det.jsonl", "coco", "odvg")
    assert summary["written"] == [str(tmp_path / "det.jsonl"), str(tmp_path / "label_map.json")]
    # COCO ids survive as ODVG labels (as mmdetection's coco2odvg keeps them).
    assert read_label_map(tmp_path / "label_map.json")[1] == "red circle"
    convert(tmp_path / "det.jsonl", tmp_path / "back.json", "odvg", "coco", label_map=tmp_path / "label_map.json")
    a, b = read_coco(world / "coco.json"), read_coco(tmp_path / "back.json")
    assert _boxes_by_image(a) == _boxes_by_image(b)
    assert a.categories == b.categories and a.category_ids == b.category_ids


def test_coco_to_groundingcap_and_back(world, tmp_path):
    convert(world / "coco.json", tmp_path / "gc.jsonl", "coco", "groundingcap")
    gc = read_groundingcap(tmp_path / "gc.jsonl")
    coco = read_coco(world / "coco.json")
    assert [im.long_caption for im in gc.images] == [im.long_caption for im in coco.images]
    assert [im.caption for im in gc.images] == [im.caption for im in coco.images]
    convert(tmp_path / "gc.jsonl", tmp_path / "back.json", "groundingcap", "coco")
    assert _boxes_by_image(read_coco(tmp_path / "back.json")) == _boxes_by_image(coco)


def test_odvg_grounding_to_groundingcap_keeps_regions(world, tmp_path):
    convert(world / "odvg_grounding.jsonl", tmp_path / "x_groundingcap.jsonl")  # formats inferred
    a, b = read_odvg(world / "odvg_grounding.jsonl"), read_groundingcap(tmp_path / "x_groundingcap.jsonl")
    for ia, ib in zip(a.images, b.images, strict=True):
        assert ia.caption == ib.caption
        assert [(i.bbox, i.phrase, i.tokens_positive) for i in ia.instances] == \
            [(i.bbox, i.phrase, i.tokens_positive) for i in ib.instances]
        assert ib.long_caption == ia.caption  # no long caption in ODVG: the grounding caption stands in


def test_region_attributes_survive_coco_odvg_and_groundingcap(world, tmp_path):
    """The synthetic world's per-object facts (colour, texture ...) ride along as region ``attributes`` through
    every grounding format; a non-object value is an error naming the field."""
    coco = read_coco(world / "coco.json")
    want = [[i.attributes for i in im.instances] for im in coco.images]
    assert want[0] and all(a["texture"] for row in want for a in row)
    for fmt, name in (("odvg", "g.jsonl"), ("groundingcap", "gc.jsonl")):
        convert(world / "coco.json", tmp_path / name, "coco", fmt, odvg_mode="grounding")
        read = read_odvg if fmt == "odvg" else read_groundingcap
        assert [[i.attributes for i in im.instances] for im in read(tmp_path / name).images] == want
    assert [[i.attributes for i in im.instances] for im in read_groundingcap(world / "groundingcap.jsonl").images] \
        == want
    bad = _grounding([0, 0, 4, 4])
    bad["grounding"]["regions"][0]["attributes"] = ["red"]
    with pytest.raises(DataFormatError, match="attributes must be an object"):
        read_odvg(_jsonl(tmp_path / "bad.jsonl", [bad]))


def test_detection_without_captions_gets_a_glip_caption(tmp_path):
    ds = Dataset(images=[ImageRecord("a.png", 50, 60, [Instance((1, 2, 11, 12), label=0),
                                                        Instance((5, 5, 30, 40), label=1)])],
                 categories=["red circle", "blue star"])
    write_odvg_grounding(tmp_path / "g.jsonl", ds)
    image = read_odvg(tmp_path / "g.jsonl").images[0]
    assert image.caption == "red circle. blue star."
    assert [(image.caption[a:b]) for i in image.instances for a, b in i.tokens_positive] == ["red circle", "blue star"]
    assert build_caption([]) == ("", [])


def test_refexp_to_odvg_and_back(world, tmp_path):
    convert(world / "refexp.json", tmp_path / "r.jsonl", "refexp", "odvg")
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert all("grounding" in r and len(r["grounding"]["regions"]) == 1 for r in records)
    convert(tmp_path / "r.jsonl", tmp_path / "back_refexp.json", "odvg", "refexp")
    a, b = read_refexp(world / "refexp.json").refs, read_refexp(tmp_path / "back_refexp.json").refs
    assert [(r.expression, r.bbox, r.tokens_positive, r.filename, r.category) for r in a] == \
        [(r.expression, r.bbox, r.tokens_positive, r.filename, r.category) for r in b]


def test_refexp_to_coco_has_each_target_once(world, tmp_path):
    convert(world / "refexp.json", tmp_path / "coco.json", "refexp", "coco")
    refs = read_refexp(world / "refexp.json").refs
    coco = read_coco(tmp_path / "coco.json")
    assert sum(len(im.instances) for im in coco.images) == len({(r.image_id, r.ann_id) for r in refs})
    assert {im.image_id for im in coco.images} == {r.image_id for r in refs}


def test_coco_to_refexp_uses_unique_names(tmp_path):
    ds = Dataset(images=[ImageRecord("a.png", 50, 60, [Instance((1, 2, 11, 12), label=0),
                                                        Instance((5, 5, 30, 40), label=1),
                                                        Instance((30, 5, 50, 40), label=1)])],
                 categories=["red circle", "blue star"])
    write_coco(tmp_path / "c.json", ds)
    convert(tmp_path / "c.json", tmp_path / "refexp.json")
    refs = read_refexp(tmp_path / "refexp.json").refs
    assert [(r.expression, r.bbox) for r in refs] == [("the red circle", (1, 2, 11, 12))]


# ----------------------------------------------------------------------------------------------- malformed input


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _grounding(bbox, spans=((0, 3),), caption="red circle.") -> dict:
    return {"filename": "a.png", "height": 10, "width": 10,
            "grounding": {"caption": caption, "regions": [{"bbox": bbox, "phrase": "red",
                                                           "tokens_positive": [list(s) for s in spans]}]}}


@pytest.mark.parametrize("bad,reason", [
    (_grounding([5, 5, 1, 9]), "x2 > x1"),
    (_grounding([1, 2, 3]), "4 finite numbers"),
    (_grounding([1, 2, 3, float("nan")]), "4 finite numbers"),
    (_grounding([0, 0, 4, 4], spans=[(0, 40)]), "outside the caption"),
    ({"filename": "a.png", "height": 10}, "missing required key"),
    ('{"filename": "a.png", "height": 1', "invalid JSON"),
    ({"filename": "a.png", "height": 10, "width": 10}, "neither 'detection' nor 'grounding'"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, bad, reason):
    path = _jsonl(tmp_path / "ann.jsonl", [_grounding([0, 0, 4, 4]), "", bad, _grounding([1, 1, 5, 5])])
    with pytest.raises(DataFormatError, match=reason) as err:
        read_odvg(path)
    assert err.value.line == 3 and err.value.path == str(path)
    assert str(err.value).startswith(f"{path}:3: ")
    ds = read_odvg(path, skip_invalid=True)
    assert ds.skipped == 1 and [im.instances[0].bbox for im in ds.images] == [(0, 0, 4, 4), (1, 1, 5, 5)]


def test_every_malformed_line_is_listed_not_only_the_first(tmp_path):
    good = _grounding([0, 0, 4, 4])
    bad = [_grounding([5, 5, 1, 9]), _grounding([1, 2, 3]), {"filename": "a.png", "height": 10}]
    path = _jsonl(tmp_path / "ann.jsonl", [good, bad[0], good, bad[1], bad[2]] + [bad[0]] * 12)
    with pytest.raises(DataFormatError, match="x2 > x1") as err:
        read_odvg(path)
    assert err.value.line == 2  # the first one, located as before
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{path}:2: ") and lines[1] == "14 more malformed record(s):"
    assert lines[2].startswith(f"{path}:4: ") and "4 finite numbers" in lines[2]
    assert lines[3].startswith(f"{path}:5: ") and "missing required key" in lines[3]
    assert len(lines) == 2 + 9 + 1 and lines[-1] == "... and 5 more"  # the first 10 listed, the rest counted


def test_odvg_detection_label_checks(tmp_path):
    rec = {"filename": "a.png", "height": 10, "width": 10,
           "detection": {"instances": [{"bbox": [0, 0, 4, 4], "label": 7, "category": "red circle"}]}}
    path = _jsonl(tmp_path / "det.jsonl", [rec])
    with pytest.raises(DataFormatError, match="not in the label map") as err:
        read_odvg(path, {0: "red circle"})
    assert err.value.line == 1
    with pytest.raises(DataFormatError, match="disagrees with label map"):
        read_odvg(path, {7: "blue star"})
    assert read_odvg(path, {7: "red circle"}).images[0].instances[0].category == "red circle"
    rec2 = json.loads(json.dumps(rec))
    rec2["detection"]["instances"][0]["category"] = "blue star"
    with pytest.raises(DataFormatError, match="earlier") as err:
        read_odvg(_jsonl(tmp_path / "det2.jsonl", [rec, rec2]))
    assert err.value.line == 2


def test_groundingcap_needs_a_long_caption(tmp_path):
    good = dict(_grounding([0, 0, 4, 4]), conversations=[{"from": "gpt", "value": "A long caption."}])
    path = _jsonl(tmp_path / "gc.jsonl", [good, _grounding([0, 0, 4, 4]),
                                          dict(good, conversations=[{"from": "human", "value": "hi"}])])
    with pytest.raises(DataFormatError, match="conversations") as err:
        read_groundingcap(path)
    assert err.value.line == 2
    ds = read_groundingcap(path, skip_invalid=True)
    assert ds.skipped == 2 and ds.images[0].long_caption == "A long caption."


def _coco(**over) -> dict:
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": 1, "name": "red circle"}]}
    data.update(over)
    return data


@pytest.mark.parametrize("ann,reason", [
    ({"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 4]}, "w > 0"),
    ({"id": 3, "image_id": 9, "category_id": 1, "bbox": [0, 0, 2, 4]}, "unknown image_id"),
    ({"id": 3, "image_id": 1, "category_id": 4, "bbox": [0, 0, 2, 4]}, "unknown category_id"),
    ({"id": 3, "image_id": 1, "bbox": [0, 0, 2, 4]}, "missing required key"),
])
def test_bad_coco_annotation_names_file_and_index(tmp_path, ann, reason):
    data = _coco()
    data["annotations"].insert(1, ann)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=reason) as err:
        read_coco(path)
    assert (err.value.section, err.value.index) == ("annotations", 1)
    assert str(err.value).startswith(f"{path}: annotations[1]: ")
    ds = read_coco(path, skip_invalid=True)
    assert ds.skipped == 1 and len(ds.images[0].instances) == 2


def test_bad_coco_structure(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataFormatError, match="annotations"):
        read_coco(path)
    path.write_text('{"images": [\n  1,\n')
    with pytest.raises(DataFormatError, match="invalid JSON") as err:
        read_coco(path)
    assert err.value.line == 3
    with pytest.raises(DataFormatError, match="file not found"):
        read_coco(tmp_path / "missing.json")


def _refexp_file(path: Path, annotations: list) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10, "caption": "the red circle",
                    "original_img_id": 4},
                   {"id": 2, "file_name": "a.png", "height": 10, "width": 10, "caption": "the blue star",
                    "original_img_id": 4}],
        "annotations": annotations, "categories": [{"id": 1, "name": "red circle"}]}))
    return path


def test_refexp_needs_exactly_one_annotation_per_expression(tmp_path):
    one = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "tokens_positive": [[4, 14]]}
    two = {"id": 2, "image_id": 2, "bbox": [1, 1, 4, 4]}
    refs = read_refexp(_refexp_file(tmp_path / "ok.json", [one, two])).refs
    assert [(r.expression, r.image_id, r.bbox, r.tokens_positive) for r in refs] == [
        ("the red circle", 4, (0, 0, 4, 4), [(4, 14)]), ("the blue star", 4, (1, 1, 5, 5), [(0, 13)])]
    path = _refexp_file(tmp_path / "bad.json", [one, dict(one, id=3)])
    with pytest.raises(DataFormatError, match="has 2 annotations") as err:
        read_refexp(path)
    assert (err.value.section, err.value.index) == ("images", 0)
    assert read_refexp(path, skip_invalid=True).skipped == 2  # both entries: one has 2, the other none
    bad_span = _refexp_file(tmp_path / "span.json", [dict(one, tokens_positive=[[4, 99]]), two])
    with pytest.raises(DataFormatError, match="outside the caption") as err:
        read_refexp(bad_span)
    assert (err.value.section, err.value.index) == ("annotations", 0)


# ----------------------------------------------------------------------------------------------- inference + CLI


def test_infer_format(world, tmp_path):
    assert infer_format(world / "coco.json") == "coco"
    assert infer_format(world / "refexp.json") == "refexp"
    assert infer_format(world / "odvg_det.jsonl") == "odvg"
    assert infer_format(world / "groundingcap.jsonl") == "groundingcap"
    assert infer_format(tmp_path / "new_refcoco_val.json", must_exist=False) == "refexp"
    assert infer_format(tmp_path / "anything.jsonl", must_exist=False) == "odvg"
    with pytest.raises(DataFormatError, match="pass it explicitly"):
        infer_format(tmp_path / "out.json", must_exist=False)


def test_convert_cli(world, tmp_path):
    runner = CliRunner()
    result = runner.invoke(_cli(), ["convert", str(world / "coco.json"), str(tmp_path / "o.jsonl"), "--to", "odvg",
                                    "--odvg-mode", "grounding"])
    assert result.exit_code == 0, result.output
    assert "converted 10 records coco -> odvg" in result.output
    assert len(read_odvg(tmp_path / "o.jsonl").images) == 10


def test_convert_cli_errors_name_the_record_and_exit_2(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [_grounding([0, 0, 4, 4]), _grounding([4, 0, 1, 4])])
    runner = CliRunner()
    result = runner.invoke(_cli(), ["convert", str(bad), str(tmp_path / "out_coco.json")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {bad}:2: bbox [4, 0, 1, 4] is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1"]
    result = runner.invoke(_cli(), ["convert", str(bad), str(tmp_path / "out_coco.json"), "--skip-invalid"])
    assert result.exit_code == 0 and "skipped 1 invalid" in result.output
    assert len(read_coco(tmp_path / "out_coco.json").images) == 1
    result = runner.invoke(_cli(), ["convert", str(bad), str(tmp_path / "out.json")])
    assert result.exit_code == 2 and "cannot infer the format" in result.output
