"""The bad-input corpus: odd but ordinary files and values through groundscope's entry points, and what a user sees.

    python benchmarks/bad_inputs.py                  # every case; writes benchmarks/results/bad_inputs.md and
                                                     # the table of docs/reliability.md
    python benchmarks/bad_inputs.py --fast           # the cases tests/test_bad_inputs.py runs

The corpus is generated into a temporary folder (nothing large is committed). Each case is run through a real entry
point and its outcome checked against the rule: a bad item gets one line naming it with the cause in words and
the fix (no traceback, no Python object repr such as ``<_io.BytesIO object at 0x...>``); every good item of the
same run is still processed and written; the exit code is 1 when some inputs failed and 2 for bad arguments.
An input the model can run (a 1 x 1 image, a 20 x 8000 strip, a CMYK or 16-bit file) is run, not refused.

Groups:
- images: one folder holding every odd image next to two good ones, through ``groundscope detect`` (nano):
  each file's line, and whether the good ones were written; the same folder through ``groundscope label``
  (every image that can run is in the COCO file);
- serve: every file of that folder uploaded to ``POST /v1/detect`` of an in-process server (nano): a 4xx JSON
  error naming the upload, or an answer, and the server still answering afterwards;
- prompts: class lists and expressions through the Python API (`detect`, `refer`) and ``groundscope detect``;
- regions: ``groundscope describe`` (dam-nano) with masks of another size, empty masks, boxes outside or
  inverted, NaN;
- annotations: COCO ground truth / results files through ``groundscope eval coco``.
The table it prints (and writes) lists each case, what the user sees and whether the rule held.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GS = [sys.executable, "-m", "groundscope.cli"]
CLASSES = "red circle,cyan star,blue diamond"
REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


@dataclass
class Outcome:
    group: str
    case: str
    entry: str
    seen: str  # what the user sees (the line about this input, or the result)
    ok: bool  # the rule held
    why: str = ""  # what broke the rule, when it did


# ----------------------------------------------------------------------------------------------- the corpus
def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def make_images(folder: Path, fast: bool) -> dict[str, str]:
    """Write the odd images (and two good ones) into `folder`; -> {file name: "bad" | "runs" | "skip"} (what
    should happen: refused with a reason, or run)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = np.asarray(Image.open(ROOT / "examples" / "synth_shapes.png").convert("RGB"))
    want: dict[str, str] = {}

    def put(name: str, data: bytes, expect: str) -> None:
        (folder / name).write_bytes(data)
        want[name] = expect

    put("good_a.png", _png(photo), "runs")
    put("good_b.jpg", _jpeg(photo), "runs")
    put("empty.png", b"", "bad")
    put("truncated.png", _png(photo)[:300], "bad")
    put("truncated.jpg", _jpeg(photo)[:400], "bad")
    put("text.jpg", b"this is a text file, not a picture\n" * 5, "bad")
    put("html.png", b"<!DOCTYPE html><html><body>404 not found</body></html>", "bad")
    put("random_bytes.webp", rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(), "bad")
    cmyk = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk, "JPEG")
    put("cmyk.jpg", cmyk.getvalue(), "runs")
    put("grey16.png", _png((rng.integers(0, 65535, (120, 160))).astype(np.uint16)), "runs")
    pal = Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    put("palette_alpha.png", buf.getvalue(), "runs")
    put("grey.png", _png(photo[..., 0]), "runs")
    put("rgba.png", _png(np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])), "runs")
    frames = [Image.fromarray(np.roll(photo, 20 * k, axis=1)) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), "runs")
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    put("animated.webp", buf.getvalue(), "runs")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", exif=exif)
    put("exif_rotated.jpg", buf.getvalue(), "runs")
    put("one_pixel.png", _png(np.zeros((1, 1, 3), np.uint8)), "runs")
    put("strip_20x8000.png", _png(rng.integers(0, 255, (8000, 20, 3), dtype=np.uint8)), "runs")
    put("strip_8000x20.png", _png(rng.integers(0, 255, (20, 8000, 3), dtype=np.uint8)), "runs")
    put("tiny_4x4.png", _png(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)), "runs")
    if not fast:
        put("large_6000x4000.jpg", _jpeg(np.asarray(Image.fromarray(photo).resize((6000, 4000)))), "runs")
        # a decompression bomb: 1-bit, 40000 x 40000 (1.6 G pixels) in a few hundred KB
        bomb = Image.new("1", (40000, 40000))
        buf = io.BytesIO()
        bomb.save(buf, "PNG", optimize=True)
        put("bomb.png", buf.getvalue(), "bad")
    (folder / "folder_named.jpg").mkdir()
    want["folder_named.jpg"] = "skip"  # a directory is not an image file: not listed at all
    try:
        os.symlink(folder / "loop_b.png", folder / "loop_a.png")
        os.symlink(folder / "loop_a.png", folder / "loop_b.png")
        want["loop_a.png"] = want["loop_b.png"] = "bad"
    except OSError:
        pass
    try:
        odd = os.fsdecode(b"latin1_\xe9t\xe9.png")
        (folder / odd).write_bytes(_png(photo))
        want[odd] = "runs"
    except (OSError, UnicodeError):
        pass
    return want


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


IN_PROCESS = False  # tests/test_bad_inputs.py: the commands run in its process (typer's CliRunner), not spawned


def run_cli(args: list[str], cwd: Path) -> tuple[int, str]:
    """`groundscope ARGS` -> (exit code, everything it printed). An exception escaping the command in process
    counts as the traceback a user would have seen."""
    if IN_PROCESS:
        import traceback

        from typer.testing import CliRunner

        from groundscope.cli import app

        res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        text = res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            text += "\nTraceback (most recent call last):\n" + "".join(traceback.format_exception(res.exception))
        return res.exit_code, text
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(GS + args, cwd=cwd, capture_output=True, text=True, env=env, errors="replace")
    return p.returncode, p.stdout + p.stderr


def _clean(text: str) -> str | None:
    """Why `text` breaks the rule (a traceback or an object repr), or None."""
    if "Traceback (most recent call last)" in text:
        return "a traceback"
    m = REPR.search(text)
    return f"an object repr {m.group(0)}" if m else None


def image_cases(work: Path, fast: bool) -> list[Outcome]:
    folder = work / "images"
    want = make_images(folder, fast)
    out_dir = work / "detect_out"
    code, text = run_cli(["detect", str(folder), "--classes", CLASSES, "--model", "nano", "--out", str(out_dir)],
                         work)
    outcomes = []
    broken = _clean(text)
    lines = text.splitlines()
    for name, expect in sorted(want.items()):
        stem = Path(name).stem
        written = (out_dir / f"{stem}.json").exists()
        line = next((ln.strip() for ln in lines if name in ln), "")
        if expect == "runs":
            ok = written and not broken
            seen = f"detected, {stem}.json written" if written else (line or "nothing written, no line")
        elif expect == "skip":
            ok = not written and not broken
            seen = "not an image file: the folder listing skips it" if not line else line
        else:
            ok = not written and bool(line) and not broken and "Traceback" not in line
            seen = line or "(no line names it)"
        outcomes.append(Outcome("images", name, "detect FOLDER", seen[:200], ok,
                                "" if ok else (broken or f"expected it to {expect}")))
    good_ok = all((out_dir / f"{Path(n).stem}.json").exists() for n, e in want.items() if e == "runs")
    outcomes.append(Outcome("images", "(the whole folder)", "detect FOLDER", f"exit code {code}; every image "
                            f"that can run was written: {good_ok}", code == 1 and good_ok and not broken,
                            "" if code == 1 else f"exit code {code}, expected 1"))
    outcomes.append(label_case(work, folder, want))
    outcomes += serve_cases(folder, want)
    return outcomes


def label_case(work: Path, folder: Path, want: dict[str, str]) -> Outcome:
    """The same folder through ``groundscope label``: every image that can run is in the COCO file, every bad
    one has its line, exit code 1."""
    out = work / "labels.json"
    code, text = run_cli(["label", str(folder), "--classes", CLASSES, "--model", "nano", "--out", str(out)], work)
    broken = _clean(text)
    listed = set()
    if out.exists():
        listed = {Path(im["file_name"]).name for im in json.loads(out.read_text())["images"]}
    # A file name that is not UTF-8 cannot go into a JSON dataset: label names it as a failure (detect runs it).
    runs = {n for n, e in want.items() if e == "runs" and n == _printable(n)}
    bad = [n for n, e in want.items() if e == "bad" or (e == "runs" and n != _printable(n))]
    named = [n for n in bad if _printable(n) in text]
    ok = code == 1 and runs <= listed and len(named) == len(bad) and not broken
    why = "" if ok else (broken or f"exit {code}; {len(runs - listed)} runnable images missing from the file, "
                                   f"{len(bad) - len(named)} bad images not named")
    return Outcome("images", "(the whole folder)", "label FOLDER", f"exit code {code}; {len(runs & listed)} of "
                   f"{len(runs)} runnable images labelled; {len(named)} of {len(bad)} bad ones named", ok, why)


def serve_cases(folder: Path, want: dict[str, str]) -> list[Outcome]:
    """Every uploadable file of the corpus through ``POST /v1/detect`` of an in-process server (nano)."""
    try:
        from fastapi.testclient import TestClient
    except ImportError:
        return [Outcome("serve", "(all)", "POST /v1/detect", "the serve extra is not installed", True)]
    from groundscope.serve.app import create_app

    outcomes = []
    with TestClient(create_app("nano")) as client:
        for name, expect in sorted(want.items()):
            path = folder / name
            try:
                data = path.read_bytes()
            except OSError:  # a directory, a symlink loop: nothing a client could upload
                continue
            upload = _printable(name)
            r = client.post("/v1/detect", files={"image": (upload, data)}, data={"classes": CLASSES})
            body = r.json()
            if expect == "runs":
                ok, seen = r.status_code == 200, f"{r.status_code}: {len(body.get('detections', []))} detections"
            else:
                err = body.get("error", "")
                ok = 400 <= r.status_code < 500 and upload in err and not _clean(err)
                seen = f"{r.status_code}: {err}"
            outcomes.append(Outcome("serve", name, "POST /v1/detect", seen[:200], ok,
                                    "" if ok else f"status {r.status_code}"))
        alive = client.get("/healthz").status_code
    outcomes.append(Outcome("serve", "(after the corpus)", "GET /healthz", f"{alive}", alive == 200,
                            "" if alive == 200 else "the server stopped answering"))
    return outcomes


# ----------------------------------------------------------------------------------------------- prompts
def prompt_cases(work: Path) -> list[Outcome]:
    import warnings

    import groundscope as gs

    det = gs.load_detector("nano")
    img = ROOT / "examples" / "synth_shapes.png"
    cases = {
        "empty list": [],
        "one empty name": [""],
        "whitespace name": ["   "],
        "only separators": [" . . "],
        "10,000-character name": ["word " * 2000],
        "emoji / RTL / combining": ["🐱 cat", "قطة", "e\u0301clair"],
        "400 duplicate names": ["red circle"] * 400,
        "a string, not a list": "red circle, cyan star",
        "a number in the list": ["red circle", 3],
        "None for the classes": None,
    }
    outcomes = []
    for case, classes in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = det.detect([img], classes)
                seen = f"runs: {len(res[0])} boxes"
                if caught:
                    seen += f"; {len(caught)} warning: {str(caught[0].message)[:120]}"
                ok = len(caught) <= 1
                why = "" if ok else f"{len(caught)} warnings"
            except Exception as e:  # the rule is checked on what is raised
                seen = f"{type(e).__name__}: {e}"
                ok = isinstance(e, ValueError) and len(str(e)) < 300 and not _clean(str(e))
                why = "" if ok else f"{type(e).__name__}, {len(str(e))} characters"
        outcomes.append(Outcome("prompts", case, "detector.detect", seen[:200], ok, why))
    for case, expr in {"empty expression": "  ", "over the token limit": "the red circle " * 100,
                       "emoji expression": "the 🐱 on the left"}.items():
        try:
            res = det.refer([img], expr)
            seen, ok, why = f"runs: {len(res[0])} box", True, ""
        except Exception as e:
            seen = f"{type(e).__name__}: {e}"
            ok = isinstance(e, ValueError) and len(str(e)) < 300 and not _clean(str(e))
            why = "" if ok else f"{type(e).__name__}"
        outcomes.append(Outcome("prompts", case, "detector.refer", seen[:200], ok, why))
    for case, value in {"--classes ' , ,'": " , ,", "--classes ''": ""}.items():
        code, text = run_cli(["detect", str(img), "--classes", value, "--model", "nano", "--out",
                              str(work / "p")], work)
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        outcomes.append(Outcome("prompts", case, "groundscope detect", f"exit {code}: {line.strip()[:160]}",
                                code == 2 and not _clean(text), "" if code == 2 else f"exit code {code}"))
    return outcomes


# ----------------------------------------------------------------------------------------------- regions
def region_cases(work: Path) -> list[Outcome]:
    img = ROOT / "examples" / "synth_shapes.png"
    w, h = Image.open(img).size
    small = work / "mask_small.png"
    Image.fromarray(np.ones((10, 10), np.uint8) * 255).save(small)
    zero = work / "mask_zero.png"
    Image.fromarray(np.zeros((h, w), np.uint8)).save(zero)
    notimg = work / "mask_text.png"
    notimg.write_text("not a mask")
    cases = {
        "mask of another size": ["--mask", str(small)],
        "all-zero mask": ["--mask", str(zero)],
        "mask file that is text": ["--mask", str(notimg)],
        "box outside the image": ["--box", f"{w + 10},{h + 10},{w + 50},{h + 50}"],
        "inverted box": ["--box", "100,100,50,50"],
        "NaN in a box": ["--box", "nan,10,50,50"],
        "points outside": ["--points", f"{w + 5},{h + 5}"],
    }
    outcomes = []
    for case, args in cases.items():
        # each bad region goes with a good one: the good one must still be described
        code, text = run_cli(["describe", str(img), "--model", "dam-nano", "--box", "10,10,120,120", *args,
                              "--json"], work)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        rec = next((json.loads(ln) for ln in lines if ln.startswith("{")), None)
        good = bool(rec) and any(r.get("text") for r in rec["regions"])
        bad_line = next((ln.strip(" │") for ln in lines if "not described" in ln or "Invalid value" in ln
                         or ln.startswith("error")), "")
        seen = f"exit {code}: {bad_line[:170]}" if bad_line else f"exit {code}: {lines[-1][:170] if lines else ''}"
        ok = code in (1, 2) and not _clean(text) and (good or code == 2)
        outcomes.append(Outcome("regions", case, "groundscope describe", seen, ok,
                                "" if ok else f"exit {code}, good region described: {good}"))
    return outcomes


# ----------------------------------------------------------------------------------------------- annotations
def annotation_cases(work: Path) -> list[Outcome]:
    gt = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}],
          "categories": [{"id": 1, "name": "cat"}]}
    good_res = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]
    cases = {
        "malformed JSON": ("{\"images\": [", json.dumps(good_res)),
        "missing key (annotations)": (json.dumps({k: v for k, v in gt.items() if k != "annotations"}),
                                      json.dumps(good_res)),
        "wrong type (bbox a string)": (json.dumps(gt), json.dumps([{**good_res[0], "bbox": "10,10,20,20"}])),
        "negative box size": (json.dumps(gt), json.dumps([{**good_res[0], "bbox": [10, 10, -5, 20]}])),
        "NaN box": (json.dumps(gt).replace("[10, 10, 20, 20]", "[NaN, 10, 20, 20]"), json.dumps(good_res)),
        "duplicate annotation ids": (json.dumps({**gt, "annotations": gt["annotations"] * 2}),
                                     json.dumps(good_res)),
        "unknown category in results": (json.dumps(gt), json.dumps([{**good_res[0], "category_id": 7}])),
        "unknown image in results": (json.dumps(gt), json.dumps([{**good_res[0], "image_id": 9}])),
    }
    outcomes = []
    for k, (case, (gt_text, res_text)) in enumerate(cases.items()):
        g, r = work / f"gt{k}.json", work / f"res{k}.json"
        g.write_text(gt_text)
        r.write_text(res_text)
        code, text = run_cli(["eval", "coco", str(g), str(r)], work)
        line = next((ln.strip() for ln in text.splitlines() if "rror" in ln or "invalid" in ln.lower()), "")
        ok = code == 2 and bool(line) and not _clean(text)
        outcomes.append(Outcome("annotations", case, "groundscope eval coco", f"exit {code}: {line[:170]}", ok,
                                "" if ok else f"exit {code}"))
    return outcomes


# ----------------------------------------------------------------------------------------------- report
def _printable(text: str) -> str:
    """A file name that is not UTF-8 (held as surrogate escapes) shown as its escapes, so the table can be written."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def table(outcomes: list[Outcome]) -> str:
    lines = ["| group | case | entry point | what the user sees | rule held |", "|---|---|---|---|---|"]
    for o in outcomes:
        seen = _printable(o.seen).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {o.group} | {_printable(o.case)} | `{o.entry}` | {seen} | "
                     f"{'yes' if o.ok else 'NO: ' + o.why} |")
    return "\n".join(lines)


def run(fast: bool, groups=("images", "prompts", "regions", "annotations")) -> list[Outcome]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        outcomes: list[Outcome] = []
        if "images" in groups:
            outcomes += image_cases(work, fast)
        if "prompts" in groups:
            outcomes += prompt_cases(work)
        if "regions" in groups:
            outcomes += region_cases(work)
        if "annotations" in groups:
            outcomes += annotation_cases(work)
    return outcomes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="skip the slow cases (large image, decompression bomb)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bad_inputs.md")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "reliability.md",
                   help="replace the table between the bad-inputs markers of this file (with every case only)")
    args = p.parse_args()
    outcomes = run(args.fast)
    text = table(outcomes)
    held = sum(o.ok for o in outcomes)
    summary = f"{held} of {len(outcomes)} cases hold the rule."
    print(text)
    print(summary)
    if args.out:
        cmd = "python benchmarks/bad_inputs.py" + (" --fast" if args.fast else "")
        args.out.write_text(f"# Bad inputs: what a user sees\n\nCommand: `{cmd}` (the rule and the groups are in "
                            f"the script's docstring).\n\n{text}\n\n{summary}\n")
    if args.docs and not args.fast and args.docs.exists():
        start, end = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
        doc = args.docs.read_text()
        if start in doc and end in doc:
            head, rest = doc.split(start, 1)
            args.docs.write_text(f"{head}{start}\n{text}\n\n{summary} (`{cmd}`)\n{end}{rest.split(end, 1)[1]}")
    sys.exit(0 if held == len(outcomes) else 1)


if __name__ == "__main__":
    main()
