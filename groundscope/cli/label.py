"""``groundscope label``: auto-label images or folders into a COCO or ODVG dataset file.

    groundscope label IMAGES... --classes "cat,dog" [--classes-file F] --model M --out FILE [--format coco|odvg]
                      [--label-map F] [--box-threshold 0.3] [--max-detections 300] [--nms IOU] [--batch-size 4]
                      [--device cpu] [--ray [--ray-address ADDR] [--ray-actors N]]
                      [--slices 640x640 [--overlap 0.2] [--merge nmm|nms] [--no-full-image]]

Exit codes as for ``detect``: 0 every image labelled, 1 some images could not be read (reported by name, the
rest are in the file), 2 bad arguments, a model that does not load, or a resume log from other settings.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from groundscope.cli.common import console, fail, parse_classes, pick_device, progress, require_images
from groundscope.slicing.tiles import OPTION_HELP as SLICE_HELP


class LabelFormat(str, Enum):
    """The dataset formats `label` writes."""

    coco = "coco"
    odvg = "odvg"


def _format_for(out: Path, fmt: Optional[LabelFormat]) -> str:
    """--format, or guessed from the suffix: .json is COCO, .jsonl ODVG."""
    if fmt is not None:
        return fmt.value
    guess = {".json": "coco", ".jsonl": "odvg"}.get(out.suffix.lower())
    if guess is None:
        raise fail(f"cannot tell the format of --out '{out}' from its suffix; pass --format coco or --format odvg")
    return guess


def _load_detector(model: str, device: str, precision: str = "fp32"):
    """Load the model, a failure as `LabelError` (no spinner: the progress bar is already on screen; the model
    is loaded only once there is work, so a rerun of a finished job skips it)."""
    from groundscope.label.work import LabelError
    from groundscope.models.loading import ModelLoadError, load_detector

    try:
        return load_detector(model, device=device, precision=precision)
    except ModelLoadError as e:
        raise LabelError(str(e)) from e


def label(
    images: Annotated[list[Path], typer.Argument(help="Image files or directories (their images, sorted).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The dataset file to write (.json COCO, .jsonl ODVG).")],
    classes: Annotated[Optional[str], typer.Option(
        "--classes", "-c", help='Comma-separated class names, e.g. "cat,remote control".')] = None,
    classes_file: Annotated[Optional[Path], typer.Option(
        "--classes-file", help="A file with one class name per line.")] = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Registry name (see `groundscope models`), hub id or local directory.")] = "llmdet-tiny",
    fmt: Annotated[Optional[LabelFormat], typer.Option(
        "--format", "-f", help="coco or odvg (default: from --out's suffix).")] = None,
    label_map: Annotated[Optional[Path], typer.Option(
        "--label-map", help="ODVG: where to write the label map (default: label_map.json beside --out).")] = None,
    box_threshold: Annotated[float, typer.Option(
        "--box-threshold", "-t", min=0.0, max=1.0, help="Minimum score.")] = 0.3,
    max_detections: Annotated[int, typer.Option(
        "--max-detections", "-k", min=1, help="Top-k (box, class) pairs per image.")] = 300,
    nms: Annotated[Optional[float], typer.Option(
        "--nms", min=0.0, max=1.0, help="Class-wise NMS IoU (off by default).")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", min=1, help="Images per forward pass (and per resume step).")] = 4,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps, or auto.")] = "cpu",
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32 (the reference's numbers) or bf16 (faster on CPUs with bf16 support).")] = "fp32",
    masks: Annotated[bool, typer.Option(
        "--masks", help="Also segment every box (SAM family) and write its mask: COCO segmentation (RLE), "
                        "ODVG instance 'mask'.")] = False,
    segmenter: Annotated[Optional[str], typer.Option(
        "--segmenter", help="Segmenter for --masks (registry name, hub id or folder; default: sam-nano for the "
                            "synthetic world's models, sam-vit-base otherwise).")] = None,
    polygons: Annotated[bool, typer.Option(
        "--polygons", help="With --masks: COCO polygons instead of RLE (needs OpenCV).")] = False,
    use_ray: Annotated[bool, typer.Option(
        "--ray", help="Run as a Ray Data pipeline (pip install 'groundscope\\[scale]'); same output file.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="A running Ray cluster (e.g. ray://head:10001 or auto); default: a local one.")] = None,
    ray_actors: Annotated[Optional[int], typer.Option(
        "--ray-actors", min=1, help="Model replicas (default: one per GPU, or one per 4 CPUs).")] = None,
    slices: Annotated[Optional[str], typer.Option("--slices", help=SLICE_HELP["slices"])] = None,
    overlap: Annotated[float, typer.Option("--overlap", help=SLICE_HELP["overlap"])] = 0.2,
    full_image: Annotated[bool, typer.Option("--full-image/--no-full-image", help=SLICE_HELP["full_image"])] = True,
    merge: Annotated[str, typer.Option("--merge", help=SLICE_HELP["merge"])] = "nmm",
) -> None:
    """Auto-label images into a COCO or ODVG dataset file (resumable; --ray to scale out)."""
    from groundscope.label.run import label_images, local_executor
    from groundscope.label.work import LabelError, LabelSettings

    from groundscope.slicing import SliceError, spec_from_options

    names = parse_classes(classes, classes_file)
    form = _format_for(out, fmt)
    try:
        spec = spec_from_options(slices, overlap, full_image, merge)
    except SliceError as e:
        raise fail(str(e))
    if (ray_address is not None or ray_actors is not None) and not use_ray:
        raise fail("--ray-address and --ray-actors go with --ray; add --ray to run on Ray")
    paths = require_images(images)
    try:
        settings = LabelSettings(model=model, classes=tuple(names), box_threshold=box_threshold,
                                 max_detections=max_detections, nms=nms, batch_size=batch_size,
                                 precision=precision, masks=masks, segmenter=segmenter, polygons=polygons,
                                 slicing=spec)
        if use_ray:
            import logging

            from groundscope.label.ray_pipeline import ray_executor

            # Ray Data logs every execution step at INFO; our progress bar already says where the run is.
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            executor = ray_executor(settings, device=device, address=ray_address, actors=ray_actors)
        else:
            executor = local_executor(settings, lambda: _load_detector(model, pick_device(device), precision))
    except LabelError as e:
        raise fail(str(e))

    with progress() as bars:
        bar = bars.add_task("label", total=len(paths))

        def on_progress(done: int, total: int) -> None:
            bars.update(bar, completed=done, total=total)

        def on_failure(message: str) -> None:
            bars.console.print(f"[yellow]skipped:[/] {escape(message)}", highlight=False, soft_wrap=True)

        try:
            report = label_images(paths, out, form, settings, executor=executor, label_map=label_map,
                                  on_progress=on_progress, on_failure=on_failure)
        except LabelError as e:
            raise fail(str(e))

    reused = f" ({report.reused} from the resume log)" if report.reused else ""
    console.print(f"[green]{report.labelled}[/] image(s), {report.annotations} box(es){reused} written to "
                  + ", ".join(f"[bold]{p}[/]" for p in report.files), highlight=False, soft_wrap=True)
    if report.failures:
        console.print(f"[red]{len(report.failures)} image(s) failed:[/]", highlight=False)
        for message in report.failures:
            console.print(f"  {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``label`` to the main app."""
    app.command("label")(label)
