"""`groundscope label`: COCO / ODVG datasets from the bundled nano model, bad images, resume, and Ray.

The images are the synthetic-world example and three variants of it in other sizes (so a chunk holds images
the detector must group by size); the model is the bundled `nano`, loaded once for the module (and by the CLI
run that writes the reference file every other run is compared with, byte for byte).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from groundscope.cli import app
from groundscope.data.coco import read_coco
from groundscope.data.odvg import read_label_map, read_odvg
from groundscope.label import LabelError, LabelSettings, label_images
from groundscope.label.partial import PartialLog, partial_path
from groundscope.label.run import local_executor
from groundscope.label.work import label_chunk, plan_chunks

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["pink cross", "cyan star", "blue diamond", "yellow diamond", "red circle"]
runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Four readable images, in the order a folder listing gives them."""
    folder = tmp_path_factory.mktemp("imgs")
    base = Image.open(REPO / "examples" / "synth_shapes.png").convert("RGB")
    base.save(folder / "a.png")
    base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    base.resize((360, 257), Image.Resampling.BILINEAR).save(folder / "c.png")
    base.crop((100, 40, 560, 400)).save(folder / "d.jpg", quality=95)
    return [folder / n for n in ("a.png", "b.png", "c.png", "d.jpg")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for the whole module, as each actor of the Ray test has: the thread count changes float
    results in their last bits (groundscope.label.work says why), and every file here is compared byte-wise."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nano():
    from groundscope import load_detector

    return load_detector("nano")


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """The COCO file of an uninterrupted `groundscope label` run over `images` (batch 2: chunks [a, b], [c, d]).

    Every output in this module sits one folder below pytest's base temp dir, like this one, so the relative
    ``file_name``s agree and whole files can be compared."""
    out = tmp_path_factory.mktemp("reference") / "labels.json"
    res = runner.invoke(app, ["label", str(images[0].parent), "--classes", ",".join(CLASSES), "-m", "nano",
                              "-o", str(out), "-t", "0.1", "-k", "20", "-b", "2"])
    assert res.exit_code == 0, res.output
    assert "4 image(s)" in res.output
    return out


def settings(**kw) -> LabelSettings:
    return LabelSettings(**{"model": "nano", "classes": tuple(CLASSES), "box_threshold": 0.1, "max_detections": 20,
                            "batch_size": 2, **kw})


class Spy:
    """The nano detector, counting the images that go through the model."""

    def __init__(self, detector):
        self.detector, self.seen = detector, []

    def detect(self, ims, *args, **kw):
        self.seen += [im.size for im in ims]
        return self.detector.detect(ims, *args, **kw)


def run(paths, out, nano, fmt="coco", **kw):
    """label_images in this process with the module's model; -> (report, the spy that saw the images)."""
    spy = Spy(nano)
    s = settings(**kw)
    return label_images(paths, out, fmt, s, executor=local_executor(s, lambda: spy)), spy


def _xywh_close(a, b, tol=0.011):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_coco_cli_matches_detect_and_loads_in_pycocotools(images, nano, reference):
    from pycocotools.coco import COCO

    out = reference
    assert not partial_path(out).exists()  # everything labelled: the resume log is gone
    data = json.loads(out.read_text())
    assert data["categories"] == [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    assert [im["file_name"] for im in data["images"]] == [f"../{images[0].parent.name}/{p.name}" for p in images]
    assert [(im["id"], im["width"], im["height"]) for im in data["images"]] == [
        (k + 1, *Image.open(p).size) for k, p in enumerate(images)]

    # The same images through det.detect, chunk by chunk as the labeller batches them.
    expected = []
    for s in range(0, len(images), 2):
        expected += nano.detect(images[s : s + 2], CLASSES, box_threshold=0.1, max_detections=20, batch_size=2)
    anns = data["annotations"]
    assert len(anns) == sum(len(d) for d in expected) > 0
    it = iter(anns)
    for image_id, dets in enumerate(expected, start=1):
        for (x1, y1, x2, y2), score, cid, _ in dets:
            a = next(it)
            assert a["image_id"] == image_id and a["category_id"] == cid + 1 and a["iscrowd"] == 0
            assert _xywh_close(a["bbox"], [x1, y1, x2 - x1, y2 - y1])
            assert a["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=0.011)
            assert a["score"] == pytest.approx(score, abs=1e-5)
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))

    # Our reader (what `groundscope train` uses) finds the images relative to the file's folder.
    ds = read_coco(out)
    assert ds.categories == CLASSES and [len(im.instances) for im in ds.images] == [len(d) for d in expected]
    assert [(out.parent / im.filename).resolve() for im in ds.images] == [p.resolve() for p in images]
    # pycocotools loads it as ground truth, and its annotations as results.
    gt = COCO(str(out))
    assert sorted(gt.getImgIds()) == [1, 2, 3, 4] and len(gt.getAnnIds()) == len(anns)
    dt = gt.loadRes([{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in anns])
    assert len(dt.getAnnIds()) == len(anns)


def test_odvg_reads_back_with_our_reader_and_equals_coco_boxes(images, nano, reference, tmp_path):
    report, _ = run(images, tmp_path / "labels.jsonl", nano, fmt="odvg")
    jsonl, lm = report.files
    assert lm == jsonl.with_name("label_map.json")
    assert read_label_map(lm) == dict(enumerate(CLASSES))
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 4 and all(set(json.loads(ln)) == {"filename", "height", "width", "detection"} for ln in lines)
    first = json.loads(lines[0])["detection"]["instances"][0]
    assert set(first) == {"bbox", "label", "category", "score"} and first["category"] == CLASSES[first["label"]]

    odvg = read_odvg(jsonl, label_map=lm)
    coco = read_coco(reference)
    assert odvg.categories == CLASSES and report.annotations == sum(len(im.instances) for im in coco.images) > 0
    for o, c in zip(odvg.images, coco.images, strict=True):
        assert (o.filename, o.width, o.height) == (c.filename, c.width, c.height)
        assert [i.label for i in o.instances] == [i.label for i in c.instances]
        for oi, ci in zip(o.instances, c.instances):
            assert all(abs(a - b) <= 0.011 for a, b in zip(oi.bbox, ci.bbox))  # xyxy vs xywh rounding
    assert len(read_odvg(jsonl).images) == 4  # the records carry their category names, so no map is needed


def test_corrupt_image_is_reported_by_name_and_skipped(images, nano, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "b2_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "labels.json"
    args = ["label", str(folder), "-c", ",".join(CLASSES), "-m", "nano", "-o", str(out), "-t", "0.1", "-b", "2"]
    monkeypatch.setattr("groundscope.models.loading.load_detector", lambda *a, **k: nano)  # loaded once per module
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "b2_broken.png" in res.output and "1 image(s) failed" in res.output
    names = [im["file_name"].rsplit("/", 1)[-1] for im in json.loads(out.read_text())["images"]]
    assert names == ["a.png", "b.png", "c.png"]
    assert partial_path(out).exists()  # kept, so a rerun retries only the broken image's chunk
    first = out.read_bytes()

    # The rerun reuses every chunk (the broken image still fails) and never loads the model.
    def no_model(*a, **k):
        raise AssertionError("the model was loaded although every chunk was in the resume log")

    monkeypatch.setattr("groundscope.models.loading.load_detector", no_model)
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "b2_broken.png" in res.output and "from the resume log" in res.output
    assert out.read_bytes() == first


def test_resume_after_interruption_gives_the_same_file_without_recomputing(images, nano, reference, tmp_path):
    out = tmp_path / "labels.json"
    s = settings()
    inner = local_executor(s, lambda: Spy(nano))

    def interrupted(chunks):  # dies (like Ctrl-C) once the first chunk is logged
        for record in inner(chunks):
            yield record
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_images(images, out, "coco", s, executor=interrupted)
    assert not out.exists() and partial_path(out).exists()
    with partial_path(out).open("a") as f:
        f.write('{"chunk": 1, "images": ["/torn')  # a crash in the middle of the next write

    spy = Spy(nano)
    report = label_images(images, out, "coco", s, executor=local_executor(s, lambda: spy))
    assert spy.seen == [Image.open(p).size for p in images[2:]]  # only the second chunk ran
    assert (report.reused, report.computed, report.failures) == (2, 2, [])
    assert out.read_bytes() == reference.read_bytes()
    assert not partial_path(out).exists()


def test_subset_run_is_reused_by_the_full_run_and_other_settings_are_refused(images, nano, reference, tmp_path):
    out = tmp_path / "labels.json"
    s = settings()
    # The log of a run over the first two images only, stopped before it wrote its file.
    with PartialLog(partial_path(out), s) as log:
        log.append(label_chunk(nano, plan_chunks(images[:2], 2)[0], s))
    with pytest.raises(LabelError, match=r"box_threshold: 0\.1 there, 0\.2 now.*delete it"):
        label_images(images, out, "coco", settings(box_threshold=0.2))
    report, spy = run(images, out, nano)
    assert report.reused == 2 and len(spy.seen) == 2
    assert out.read_bytes() == reference.read_bytes()


def test_log_from_before_precision_existed_resumes_at_fp32_only(images, nano, tmp_path):
    """A resume log written before `precision` was a setting ran at fp32: it resumes an fp32 run, not a bf16 one."""
    out = tmp_path / "labels.json"
    s = settings()
    with PartialLog(partial_path(out), s) as log:
        log.append(label_chunk(nano, plan_chunks(images[:2], 2)[0], s))
    lines = partial_path(out).read_text().splitlines()
    header = json.loads(lines[0])
    assert header["settings"].pop("precision") == "fp32"
    partial_path(out).write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    with pytest.raises(LabelError, match=r"precision: 'fp32' there, 'bf16' now"):
        label_images(images, out, "coco", settings(precision="bf16"))
    with PartialLog(partial_path(out), s) as log:  # the same settings at fp32: accepted, its chunk reused
        assert len(log.done) == 1


def test_settings_are_checked(tmp_path):
    with pytest.raises(LabelError, match="precision 'fp16': use fp32 or bf16"):
        settings(precision="fp16")
    with pytest.raises(LabelError, match="'cat' is given twice"):
        settings(classes=("cat", "dog", "cat"))
    with pytest.raises(LabelError, match="is a folder"):
        label_images([REPO / "examples" / "synth_shapes.png"], tmp_path, "coco", settings())
    res = runner.invoke(app, ["label", str(REPO / "examples" / "synth_shapes.png"), "-c", "x", "-m", "nano",
                              "-o", str(tmp_path / "labels.txt")])
    assert res.exit_code == 2 and "--format coco or --format odvg" in res.output


def test_ray_missing_names_the_extra(monkeypatch):
    from groundscope.label.ray_pipeline import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(LabelError, match=r"pip install 'groundscope\[scale\]'"):
        import_ray()


def test_ray_pipeline_writes_the_single_process_file(images, reference, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is the optional extra groundscope[scale]")
    from groundscope.label.ray_pipeline import ray_executor

    # Two actors on a 2-CPU local cluster: one torch thread each, as the module's single-process runs have.
    broken = tmp_path / "zz_broken.png"
    broken.write_bytes(b"not an image")
    s = settings()
    out = tmp_path / "labels.json"
    try:
        report = label_images([*images, broken], out, "coco", s, executor=ray_executor(s, actors=2, num_cpus=2))
    finally:
        left_running = ray.is_initialized()
        if left_running:
            ray.shutdown()
    assert not left_running, "the Ray executor left the local cluster it started running"
    assert len(report.failures) == 1 and report.failures[0].startswith(f"cannot read image '{broken}': ")
    assert (report.labelled, report.computed) == (4, 5)
    assert out.read_bytes() == reference.read_bytes()  # input order, whatever order the actors finished in


def test_label_with_masks_writes_segmentation_that_evaluates(images, nano, tiny_sam_dir, tmp_path):
    """--masks: each COCO annotation carries the mask detect(masks=True) gives for its box (RLE; area = mask
    pixels) and pycocotools reads it back; polygons on request; ODVG instances carry 'mask'; --polygons without
    --masks is refused."""
    from groundscope.masks import decode
    from groundscope.models.segmenter import load_segmenter

    out = tmp_path / "labels.json"
    args = ["label", str(images[0]), str(images[2]), "-c", ",".join(CLASSES), "-m", "nano", "-o", str(out),
            "--masks", "--segmenter", str(tiny_sam_dir)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    coco = json.loads(out.read_text())
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    seg = load_segmenter(tiny_sam_dir)
    want = nano.detect(images[0], CLASSES, box_threshold=0.3, masks=True, segmenter=seg)
    assert len(anns) == len(want) > 0
    got = decode([a["segmentation"] for a in anns])
    assert np.array_equal(got, want.mask_array())
    assert [a["area"] for a in anns] == [float(m.sum()) for m in got]
    assert coco["info"]["segmenter"] == str(tiny_sam_dir)

    # pycocotools reads the file as a mask ground truth: its annToMask gives the same pixels
    from pycocotools.coco import COCO

    gt = COCO(str(out))
    for a in anns:
        assert np.array_equal(gt.annToMask(gt.anns[a["id"]]).astype(bool), decode([a["segmentation"]])[0])

    poly_out = tmp_path / "poly.json"
    res = runner.invoke(app, [*args[:-5], "-o", str(poly_out), "--masks", "--segmenter", str(tiny_sam_dir),
                              "--polygons"])
    assert res.exit_code == 0, res.output
    segs = [a["segmentation"] for a in json.loads(poly_out.read_text())["annotations"]]
    assert all(isinstance(s, list) or "counts" in s for s in segs)
    assert any(isinstance(s, list) for s in segs)

    odvg_out = tmp_path / "labels.jsonl"
    res = runner.invoke(app, [*args[:-5], "-o", str(odvg_out), "--masks", "--segmenter", str(tiny_sam_dir)])
    assert res.exit_code == 0, res.output
    row = json.loads(odvg_out.read_text().splitlines()[0])
    inst = row["detection"]["instances"]
    assert np.array_equal(decode([i["mask"] for i in inst]), want.mask_array())
    assert len(read_odvg(odvg_out).images) == 2  # our reader takes the file with its masks

    res = runner.invoke(app, [*args[:-5], "-o", str(tmp_path / "x.json"), "--polygons"])
    assert res.exit_code == 2 and "add --masks" in res.output
