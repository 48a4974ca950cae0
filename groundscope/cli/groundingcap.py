"""``groundscope groundingcap``: build LLMDet GroundingCap records from images and detailed captions.

    groundscope groundingcap --images DIR --captions FILE --model M --out FILE
                             [--threshold 0.3] [--nms 0.5] [--spacy-model en_core_web_sm] [--device cpu]
                             [--batch-size 4]

FILE (captions) is JSON lines ``{"image": "name.jpg", "caption": "..."}`` or one JSON object
``{"name.jpg": "caption", ...}``. Exit codes as for the other verbs: 0 all written, 1 some images could not be
read (the rest are written), 2 bad captions file, missing spaCy / pipeline, a model that does not load, or a
resume log from other settings.

Resumable: finished chunks are kept in ``FILE.partial.jsonl``; rerunning the same command after an interruption
(Ctrl-C, a crash, kill -9) builds only the rest and writes the same file an uninterrupted run writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from groundscope.cli.common import console, fail, load_model


def groundingcap(
    images: Annotated[Path, typer.Option("--images", help="Folder the captions' image names are relative to.")],
    captions: Annotated[Path, typer.Option(
        "--captions", help='JSON lines {"image": "name.jpg", "caption": "..."} or a JSON object {name: caption}.')],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Detector: registry name (see `groundscope models`), hub id or local directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="GroundingCap .jsonl to write.")],
    threshold: Annotated[float, typer.Option(
        "--threshold", "-t", min=0.0, help="Minimum box score kept (above 1 keeps none).")] = 0.3,
    nms: Annotated[float, typer.Option(
        "--nms", min=0.0, max=1.0, help="Per-phrase NMS IoU for duplicate boxes (1 keeps all).")] = 0.5,
    spacy_model: Annotated[str, typer.Option(
        "--spacy-model", help="spaCy English pipeline (package name or directory) for noun phrases.")
    ] = "en_core_web_sm",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps, or auto.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per grounding call.")] = 4,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32 (the reference's numbers) or bf16 (faster on CPUs with bf16 support).")] = "fp32",
) -> None:
    """Build GroundingCap records: clean each caption, ground its noun phrases with the detector, write JSON lines."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from groundscope.data.errors import DataFormatError
    from groundscope.label.groundingcap import NLPUnavailableError, build_groundingcap, load_spacy, read_caption_file
    from groundscope.label.work import LabelError

    if not images.is_dir():
        raise fail(f"--images '{images}' is not a folder")
    # Cheap checks first, so a bad file or a missing pipeline fails before the model loads.
    try:
        items = read_caption_file(captions)
    except DataFormatError as e:
        raise fail(str(e))
    try:
        nlp = load_spacy(spacy_model)
    except NLPUnavailableError as e:
        raise fail(str(e))
    detector = load_model(model, device, precision)

    with Progress(TextColumn("[bold]groundingcap"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task("groundingcap", total=len(items))

        def on_skip(name: str, reason: str) -> None:
            bar.console.print(f"[yellow]skipped[/] {escape(f'{name}: {reason}')}", highlight=False, soft_wrap=True)

        try:
            summary = build_groundingcap(
                items, images, detector, out, nlp=nlp, threshold=threshold, nms_iou=None if nms >= 1.0 else nms,
                batch_size=batch_size, precision=precision, on_skip=on_skip,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        except (NLPUnavailableError, LabelError) as e:
            raise fail(str(e))
        except OSError as e:
            raise fail(f"cannot write '{out}': {e.strerror or e}")

    typer.echo(
        f"groundingcap: {summary.images} images, {summary.written} written, "
        f"{summary.phrases_found} phrases found, {summary.phrases_grounded} phrases grounded "
        f"({summary.boxes} boxes), {len(summary.skipped)} skipped -> {out}"
    )
    if summary.unreadable:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``groundingcap`` command to ``app``."""
    app.command("groundingcap")(groundingcap)
