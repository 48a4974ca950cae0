"""Every `groundscope eval run` command of docs/protocols.md runs, as written, on a tiny random model and tiny
stand-ins for the datasets it names (same file names, the formats the official datasets use)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from groundscope.cli.evaluate import eval_app
from groundscope.evaluate.odinw import builtin_odinw

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "protocols.md"
PHOTO = REPO / "examples" / "chelsea.jpg"


def doc_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("groundscope eval run")]


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def photo(folder: Path, name: str = "img.jpg") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PHOTO, folder / name)
    w, h = Image.open(PHOTO).size
    return {"file_name": name, "width": w, "height": h}


def make_data(root: Path) -> None:
    """Tiny stand-ins named as the doc names them, relative to `root` (the commands' working folder)."""
    img = photo(root / "val2017")
    box = {"bbox": [40, 40, 200, 150], "area": 30000, "iscrowd": 0}
    write(root / "instances_val2017.json", {
        "images": [{"id": 1, **img}], "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 17, **box}]})
    img = photo(root / "coco")
    cats = [{"id": i + 1, "name": n, "frequency": "rcf"[i % 3]} for i, n in enumerate(
        ["cat", "bow_(weapon)", "bow_(decorative_ribbons)", "sofa"] + [f"thing_{k}" for k in range(50)])]
    write(root / "lvis_v1_minival_inserted_image_name.json", {
        "images": [{"id": 1, **img, "neg_category_ids": [4], "not_exhaustive_category_ids": []}],
        "categories": cats, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, **box}]})
    for manifest in ("odinw13", "odinw35"):
        for d in builtin_odinw(manifest):
            folder = root / "odinw" / d.folder
            img = photo(folder / d.images)
            write(folder / d.annotations, {
                "images": [{"id": 1, **img}], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(d.classes)],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, **box}]})
    img = photo(root / "train2014")
    write(root / "finetune_refcoco_val.json", {
        "images": [{"id": 0, **img, "caption": "the cat on the left", "dataset_name": "refcoco"}],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 1, **box}]})
    img = photo(root / "flickr30k_images")
    caption = "A cat lies next to a remote"
    write(root / "final_flickr_separateGT_test.json", {
        "images": [{"id": 0, **img, "caption": caption, "tokens_positive_eval": [[[0, 5]], [[19, 27]]]}],
        "annotations": [{"id": 1, "image_id": 0, "phrase_ids": 0, "category_id": 1, **box},
                        {"id": 2, "image_id": 0, "phrase_ids": 1, "category_id": 1, "bbox": [5, 5, 30, 20],
                         "area": 600, "iscrowd": 0}]})


def test_the_doc_lists_every_benchmark():
    cmds = doc_commands()
    kinds = {shlex.split(c)[shlex.split(c).index("--dataset") + 1] for c in cmds}
    assert kinds == {"coco", "lvis", "odinw", "refexp", "phrase"}
    assert any("--manifest odinw13" in c for c in cmds) and any("--manifest odinw35" in c for c in cmds)


def test_every_command_of_the_protocols_doc_runs(tiny_mm_dir, tmp_path, monkeypatch):
    import groundscope

    real_load = groundscope.load_detector

    def tiny(name, device="cpu", **kw):
        det = real_load(str(tiny_mm_dir), device=device)
        det.image_size = (96, 160)  # small inputs: the protocol, not the resolution, is under test
        det.name = name
        return det

    monkeypatch.setattr(groundscope, "load_detector", tiny)
    monkeypatch.chdir(tmp_path)
    make_data(tmp_path)
    cmds = doc_commands()
    assert len(cmds) >= 7
    for cmd in cmds:
        args = shlex.split(cmd)[2:] + ["--no-progress"]  # after "groundscope eval"
        if "--rec-rule" not in args and "llmdet" in cmd and "refexp" in cmd:
            pytest.fail("an LLMDet refexp command needs NLTK; the doc should say so")
        result = CliRunner().invoke(eval_app, args)
        assert result.exit_code == 0, f"{cmd}\n{result.output}\n{result.exception!r}"
        out = Path(args[args.index("--out") + 1])
        metrics = json.loads((out / ("odinw.json" if "odinw" in cmd else "metrics.json")).read_text())
        assert metrics, cmd
        if "--dataset lvis" in cmd:
            assert metrics["settings"]["chunk_size"] == 40 and "fixed" in metrics
        if "--dataset coco" in cmd:
            assert metrics["max_dets"] == [100, 300, 1000]
        if "--dataset phrase" in cmd:
            assert "R@-1" in metrics
        if "--iou giou" in cmd:
            assert metrics["overlap"] == "giou"
