"""``groundscope detect``, ``ground``, ``refer``, ``caption`` and ``models``: the detector's own verbs.

    groundscope detect IMAGES... --classes "cat,remote control" [--model M] [--masks [--segmenter S]] [--out DIR]
                       [--slices 640x640 [--overlap 0.2] [--merge nmm|nms] [--no-full-image]]   (ground, refer too)
    groundscope ground IMAGES... --caption "a cat on a sofa" [--phrase cat ...]
    groundscope refer IMAGES... --expression "the cat on the left" [--top-k 1] [--rec-rule mean|mmgdino|llmdet]
    groundscope caption IMAGES... --model FOLDER_WITH_caption_head [--box x1,y1,x2,y2 ...] [--json]
    groundscope models [--json]

The image loop loads each image (reporting bad ones by name and carrying on), calls the Python API in batches and
writes <stem>.json and <stem>.png; it never touches tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape
from rich.console import Console
from rich.table import Table

from groundscope.answers import result_record
from groundscope.cli.common import (
    BatchOpt,
    DeviceOpt,
    MasksOpt,
    ModelOpt,
    OutOpt,
    PrecisionOpt,
    SegmenterOpt,
    console,
    fail,
    load_model,
    load_segmenter_for,
    parse_box,
    parse_classes,
    progress,
    require_images,
)

from groundscope.slicing.tiles import OPTION_HELP as SLICE_HELP

_COMMANDS: list[Callable] = []

SlicesOpt = typer.Option(None, "--slices", help=SLICE_HELP["slices"])
OverlapOpt = typer.Option(0.2, "--overlap", help=SLICE_HELP["overlap"])
FullImageOpt = typer.Option(True, "--full-image/--no-full-image", help=SLICE_HELP["full_image"])
MergeOpt = typer.Option("nmm", "--merge", help=SLICE_HELP["merge"])


def slicing(slices: str | None, overlap: float, full_image: bool, merge: str):
    """The `SliceSpec` of the slicing options (None without --slices); a bad value is one line and exit code 2."""
    from groundscope.slicing import SliceError, spec_from_options

    try:
        return spec_from_options(slices, overlap, full_image, merge)
    except SliceError as e:
        raise fail(str(e))


def _command(fn: Callable) -> Callable:
    """Mark `fn` as one of this module's commands; `register` adds them to the app."""
    _COMMANDS.append(fn)
    return fn


def register(app: typer.Typer) -> None:
    """Add ``detect``, ``ground``, ``refer``, ``caption`` and ``models`` to `app`."""
    for fn in _COMMANDS:
        app.command()(fn)


def run_task(
    images: list[Path],
    task: str,
    model_name: str,
    device: str,
    out: Path,
    batch_size: int,
    call: Callable,
    precision: str = "fp32",
    masks: bool = False,
    segmenter: str | None = None,
    sliced: bool = False,
) -> None:
    """Shared image loop: load, run `call(detector, [PIL images]) -> [Detections]` in batches, write files; with
    `masks`, each box is segmented (detect, then segment) before the files are written. `sliced`: `call` slices
    each image (its tiles fill the detector's batches), so images go one at a time and the bar moves per image."""
    from groundscope.detections import save_detections_json
    from groundscope.images import ImageLoadError, load_image
    from groundscope.prompts import PromptError
    from groundscope.visualize import annotate

    paths = require_images(images)
    detector = load_model(model_name, device, precision)
    # SAM 3 as a detector predicts its own masks: --masks keeps them unless --segmenter names another segmenter
    own_masks = getattr(detector, "predicts_masks", False) and segmenter is None
    seg = load_segmenter_for(segmenter, model_name, device) if masks and not own_masks else None
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    stems: dict[str, int] = {}
    written = 0

    def stem_for(p: Path) -> str:
        n = stems.get(p.stem, 0)
        stems[p.stem] = n + 1
        return p.stem if n == 0 else f"{p.stem}_{n}"

    def flush(batch: list[tuple[Path, object]]) -> None:
        nonlocal written
        if not batch:
            return
        try:
            results = call(detector, [im for _, im in batch])
        except PromptError as e:
            raise fail(str(e))
        if seg is not None:
            results = [seg.add_masks(im, d) for (_, im), d in zip(batch, results)]
        for (path, im), dets in zip(batch, results):
            stem = stem_for(path)
            payload = result_record(str(path), im.width, im.height, detector.name, task, dets)
            save_detections_json(out / f"{stem}.json", payload)
            annotate(im, dets).save(out / f"{stem}.png")
            written += 1

    with progress() as bars:
        bar = bars.add_task(task, total=len(paths))
        batch: list[tuple[Path, object]] = []
        for path in paths:
            try:
                batch.append((path, load_image(path)))
            except ImageLoadError as e:
                failures.append(str(e))
                bars.console.print(f"[yellow]skipped:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            if len(batch) == (1 if sliced else batch_size):
                flush(batch)
                bars.advance(bar, len(batch))
                batch = []
        flush(batch)
        bars.update(bar, completed=len(paths))

    console.print(f"[green]{written}[/] image(s) written to [bold]{out}[/] (<stem>.json + <stem>.png)", highlight=False)
    if failures:
        console.print(f"[red]{len(failures)} image(s) failed:[/]", highlight=False)
        for f in failures:
            console.print(f"  {escape(str(f))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@_command
def detect(
    images: list[Path] = typer.Argument(..., help="Image files or directories."),
    classes: Optional[str] = typer.Option(None, "--classes", "-c", help='Comma-separated class names, e.g. "cat,remote control".'),
    classes_file: Optional[Path] = typer.Option(None, "--classes-file", help="A file with one class name per line."),
    model: str = ModelOpt,
    box_threshold: float = typer.Option(0.3, "--box-threshold", "-t", min=0.0, max=1.0, help="Minimum score."),
    max_detections: int = typer.Option(300, "--max-detections", "-k", min=1, help="Top-k (box, class) pairs per image."),
    nms: Optional[float] = typer.Option(None, "--nms", min=0.0, max=1.0, help="Class-wise NMS IoU (off by default)."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", min=1, help="Class names per prompt (the LVIS "
                                             "protocol: 40); default: as many as fit in the text limit (faster)."),
    per_chunk: bool = typer.Option(False, "--per-chunk", help="Keep --max-detections per prompt chunk and "
                                   "concatenate the chunks (mmdetection's chunked prediction)."),
    masks: bool = MasksOpt,
    segmenter: Optional[str] = SegmenterOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    out: Path = OutOpt,
    slices: Optional[str] = SlicesOpt,
    overlap: float = OverlapOpt,
    full_image: bool = FullImageOpt,
    merge: str = MergeOpt,
) -> None:
    """Open-vocabulary detection: boxes for each class name."""
    from groundscope.slicing import sliced_detect

    names = parse_classes(classes, classes_file)
    spec = slicing(slices, overlap, full_image, merge)
    extra = {**({"chunk_size": chunk_size} if chunk_size else {}), **({"per_chunk": True} if per_chunk else {})}

    def call(det, ims):
        if spec is not None:
            return sliced_detect(det, ims, names, spec, box_threshold=box_threshold, max_detections=max_detections,
                                 nms_iou=nms, batch_size=batch_size, **extra)
        return det.detect(ims, names, box_threshold=box_threshold, max_detections=max_detections, nms_iou=nms,
                          batch_size=batch_size, **extra)

    run_task(images, "detect", model, device, out, batch_size, call, precision, masks, segmenter, spec is not None)


@_command
def ground(
    images: list[Path] = typer.Argument(..., help="Image files or directories."),
    caption: str = typer.Option(..., "--caption", help="The sentence whose phrases to ground."),
    phrase: Optional[list[str]] = typer.Option(None, "--phrase", "-p", help="A phrase of the caption (repeatable). Without it, phrases are read off the tokens."),
    model: str = ModelOpt,
    box_threshold: float = typer.Option(0.3, "--box-threshold", "-t", min=0.0, max=1.0),
    text_threshold: float = typer.Option(0.25, "--text-threshold", min=0.0, max=1.0, help="Token threshold when decoding phrases."),
    max_detections: int = typer.Option(100, "--max-detections", "-k", min=1),
    masks: bool = MasksOpt,
    segmenter: Optional[str] = SegmenterOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    out: Path = OutOpt,
    slices: Optional[str] = SlicesOpt,
    overlap: float = OverlapOpt,
    full_image: bool = FullImageOpt,
    merge: str = MergeOpt,
) -> None:
    """Phrase grounding: boxes for the phrases of a caption."""
    from groundscope.prompts import PromptError, find_phrase_spans, normalize_caption
    from groundscope.slicing import sliced_ground

    if phrase:
        try:
            find_phrase_spans(normalize_caption(caption), phrase)
        except PromptError as e:
            raise fail(str(e))
    spec = slicing(slices, overlap, full_image, merge)
    options = {"box_threshold": box_threshold, "text_threshold": text_threshold, "max_detections": max_detections,
               "batch_size": batch_size}

    def call(det, ims):
        if spec is not None:
            return sliced_ground(det, ims, caption, phrase or None, spec, **options)
        return det.ground(ims, caption, phrase or None, **options)

    run_task(images, "ground", model, device, out, batch_size, call, precision, masks, segmenter, spec is not None)


@_command
def refer(
    images: list[Path] = typer.Argument(..., help="Image files or directories."),
    expression: str = typer.Option(..., "--expression", "-e", help='e.g. "the cat on the left".'),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Boxes to return, best first."),
    rec_rule: str = typer.Option("mean", "--rec-rule", help="Which tokens score a box: mean (the whole "
                                 "expression), mmgdino (the best token, MM-GDINO's evaluation) or llmdet (the first "
                                 "noun phrase, LLMDet's; needs NLTK)."),
    model: str = ModelOpt,
    masks: bool = MasksOpt,
    segmenter: Optional[str] = SegmenterOpt,
    batch_size: int = BatchOpt,
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    out: Path = OutOpt,
    slices: Optional[str] = SlicesOpt,
    overlap: float = OverlapOpt,
    full_image: bool = FullImageOpt,
    merge: str = MergeOpt,
) -> None:
    """Referring expression comprehension: the one box an expression describes."""
    from groundscope.prompts import REC_RULES
    from groundscope.rec_subject import RecSubjectError, nltk_tagger

    if not expression.strip(" ."):
        raise fail("--expression is empty; pass the words that single out one object")
    if rec_rule not in REC_RULES:
        raise fail(f"--rec-rule must be one of {', '.join(REC_RULES)}, not {rec_rule!r}")
    if rec_rule == "llmdet":
        try:
            nltk_tagger()
        except RecSubjectError as e:
            raise fail(str(e))
    from groundscope.slicing import sliced_refer

    spec = slicing(slices, overlap, full_image, merge)
    options = {"top_k": top_k, "batch_size": batch_size, **({} if rec_rule == "mean" else {"rec_rule": rec_rule})}

    def call(det, ims):
        if spec is not None:  # the best top_k over every tile and the whole image
            return sliced_refer(det, ims, expression, spec, **options)
        return det.refer(ims, expression, **options)

    run_task(images, "refer", model, device, out, batch_size, call, precision, masks, segmenter, spec is not None)


@_command
def caption(
    images: list[Path] = typer.Argument(..., help="Image files or directories."),
    model: str = typer.Option(..., "--model", "-m", help="A model folder with a caption_head/ (LLMDet training writes one)."),
    box: list[str] = typer.Option([], "--box", help="x1,y1,x2,y2 pixel box to describe in a phrase (repeatable); "
                                                    "without it the whole image is described."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Detector prompt while it looks (default: the head's)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Generation budget."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image instead of text."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
) -> None:
    """LLMDet's caption head: a detailed caption of each image, or a phrase for each --box."""
    from groundscope.images import ImageLoadError, load_image
    from groundscope.models.captioner import CaptionerError

    boxes = [parse_box(b) for b in box]
    paths = require_images(images)
    detector = load_model(model, device, precision)
    try:
        with console.status("loading the caption head ..."):
            detector._require_caption_head()
    except CaptionerError as e:
        raise fail(str(e))
    failures = []
    with progress() as bar:
        task = bar.add_task("caption", total=len(paths))
        for p in paths:
            try:
                image = load_image(p)
            except ImageLoadError as e:
                failures.append(f"{p}: {e}")
                bar.advance(task)
                continue
            result = detector.caption(image, boxes or None, prompt=prompt, max_new_tokens=max_new_tokens)
            if as_json:
                record = {"image": str(p)}
                record.update({"regions": [{"box": b, "phrase": t} for b, t in zip(boxes, result)]} if boxes
                              else {"caption": result})
                print(json.dumps(record), flush=True)
            elif boxes:
                for b, t in zip(boxes, result):
                    print(f"{p}\t{','.join(f'{v:g}' for v in b)}\t{t}", flush=True)
            else:
                print(f"{p}\t{result}", flush=True)
            bar.advance(task)
    for f in failures:
        console.print(f"[yellow]skipped[/] {escape(str(f))}", highlight=False)
    if failures:
        raise typer.Exit(1)


@_command
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the model registry: short names, where they load from, what each is."""
    from groundscope.models.registry import REGISTRY

    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in REGISTRY.values()], indent=2))
        return
    table = Table(title="groundscope models (any hub id or local directory works too)")
    for col in ("name", "kind", "family", "backbone", "source", "what it is"):
        table.add_column(col, overflow="fold")
    for e in REGISTRY.values():
        table.add_row(e.name, e.kind, e.family, e.backbone, e.source + (" (bundled)" if e.bundled else ""),
                      e.description)
    Console().print(table)
