"""``groundscope distill ...``: RKD's offline steps.

    groundscope distill embed-regions ANNOTATIONS --teacher T --model M --out CACHE [--image-labels F] [--k 5]
    groundscope distill train-teacher --data coco_all.json --out runs/teacher   # the synthetic world's CLIP

Exit codes: 0 done, 1 some images failed (named; the rest are cached), 2 bad arguments, model or data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from groundscope.cli.common import console, fail

distill_app = typer.Typer(help="RKD: region embeddings from a CLIP-like teacher, the synthetic teacher.",
                          no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@distill_app.command("embed-regions")
def embed_regions_cmd(
    annotations: Path = typer.Argument(..., help="The training annotation file (COCO or ODVG): its images are "
                                                 "the ones embedded, keyed by their file names."),
    teacher: str = typer.Option(..., "--teacher", help="CLIP-like teacher: hub id or folder."),
    model: str = typer.Option(..., "--model", "-m", help="Detector that proposes regions and pseudo-boxes."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder (rerun to resume)."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image folder (default: the "
                                                                         "annotation file's folder)."),
    image_labels: Optional[Path] = typer.Option(None, "--image-labels", help="Image-level labels (COCO file or "
                                                                             "JSON lines) -> pseudo-boxes."),
    k: int = typer.Option(5, "--k", min=1, help="Regions per image."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="Proposal prompt (repeat; default: the "
                                                                     "reference's 'all objects', ...)."),
    proposal_top: int = typer.Option(50, "--proposal-top", min=1, help="Boxes per prompt before NMS."),
    pseudo_template: str = typer.Option("every {}", "--pseudo-template", help="Prompt of a label's pseudo-box."),
    pseudo_threshold: float = typer.Option(0.95, "--pseudo-threshold", min=0.0, max=1.0,
                                           help="Minimum pseudo-box score."),
    device: str = typer.Option("cpu", "--device"),
    precision: str = typer.Option("fp32", "--precision", help="The detector's precision: fp32 (the reference's "
                                  "numbers) or bf16 (faster on CPUs with bf16 support); recorded in the manifest."),
) -> None:
    """Cache K class-agnostic regions per image, the teacher's crop embeddings and pseudo-boxes."""
    from groundscope.data import DataFormatError
    from groundscope.distill.regions import RegionCacheError, RegionSettings, embed_regions, read_image_labels
    from groundscope.models.teacher import Teacher
    from groundscope.models.loading import ModelLoadError, load_detector
    from groundscope.train.data import load_records
    from groundscope.train.progress import step_progress

    if "{}" not in pseudo_template:
        raise fail(f"--pseudo-template '{pseudo_template}' must contain {{}} where the class name goes")
    try:
        records, _ = load_records(annotations)
    except (DataFormatError, OSError, ValueError) as e:
        raise fail(f"cannot read '{annotations}': {e}")
    settings = RegionSettings(teacher=teacher, detector=model, k=k, proposal_top=proposal_top,
                              pseudo_template=pseudo_template, pseudo_threshold=pseudo_threshold,
                              image_labels=str(image_labels) if image_labels else None,
                              detector_precision=precision)
    if prompt:
        settings.proposal_prompts = list(prompt)
    try:
        labels = read_image_labels(image_labels) if image_labels else None
        det = load_detector(model, device=device, precision=precision)
        t = Teacher(teacher, device)
    except (RegionCacheError, ModelLoadError) as e:
        raise fail(str(e))
    names = [r.filename for r in records.images]
    with step_progress("regions", len(names), console) as update:
        done = 0

        def on_image(_name, _reused):
            nonlocal done
            done += 1
            update(done, "")

        try:
            counts = embed_regions(det, t, names, image_root or annotations.parent, out, settings, labels, on_image)
        except RegionCacheError as e:
            raise fail(str(e))
    console.print(f"{counts['embedded']} image(s) embedded, {counts['reused']} reused -> {out}", highlight=False)
    for name, err in counts["failed"].items():
        console.print(f"[red]failed:[/] {escape(f'{name}: {err}')}", highlight=False)
    if counts["failed"]:
        raise typer.Exit(1)


@distill_app.command("train-teacher")
def train_teacher_cmd(
    data: Path = typer.Option(..., "--data", help="COCO file with every category (a synthetic test world's "
                                                  "coco_all.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the teacher (CLIPModel + processor + tokenizer)."),
    tokenizer: str = typer.Option("nano", "--tokenizer", help="Model whose WordPiece tokenizer the text tower uses."),
    steps: int = typer.Option(1500, "--steps", min=1),
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=2),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    val: Optional[Path] = typer.Option(None, "--val", help="COCO file whose crops measure zero-shot accuracy."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the synthetic world's small CLIP (the stand-in for a web-trained teacher)."""
    from groundscope.distill.synth_teacher import train_synth_teacher
    from groundscope.models.loading import ModelLoadError, resolve

    try:
        source, _ = resolve(tokenizer)
    except ModelLoadError as e:
        raise fail(str(e))
    result = train_synth_teacher(data, source, out, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                 val_file=val, log=lambda m: console.print(m, highlight=False))
    console.print(f"teacher -> {out}: {result}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(distill_app, name="distill")
