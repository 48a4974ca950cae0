"""What every verb module of the command line shares: the consoles, the one-line error, the shared options, model
loading with its one-line error, image expansion, progress bars, and the region texts as typer errors.

Verb modules import this and the task packages, never another verb module. Exit codes: 0 all done, 1 some inputs
failed, 2 bad arguments, inputs or model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from groundscope import answers

console = Console(stderr=True)  # messages, progress and errors
stdout = Console()  # tables that are the command's output
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

ModelOpt = typer.Option("llmdet-tiny", "--model", "-m", help="Registry name (see `groundscope models`), hub id or local directory.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps, or auto.")
OutOpt = typer.Option(Path("groundscope_out"), "--out", "-o", help="Directory for <stem>.json and <stem>.png.")
BatchOpt = typer.Option(4, "--batch-size", "-b", min=1, help="(image, prompt) pairs per forward pass.")
PrecisionOpt = typer.Option("fp32", "--precision", help="fp32 (the reference's numbers) or bf16 (faster on CPUs "
                            "with bf16 support; box and score heads stay fp32).")
MasksOpt = typer.Option(False, "--masks", help="Also segment every box with a promptable segmenter (SAM family); "
                        "masks go to the JSON as COCO RLE and onto the picture.")
SegmenterOpt = typer.Option(None, "--segmenter", help="Segmenter for --masks: a registry name (sam-vit-base, "
                            "sam2.1-hiera-tiny, edgetam, sam3, sam-nano ...), hub id or folder. Default: sam-nano "
                            "for the synthetic world's models, sam-vit-base otherwise.")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line on stderr (the message as text, never as markup) and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def input_errors() -> Iterator[None]:
    """Bad evaluation input files become one clear line and exit code 2, not a traceback."""
    from groundscope.evaluate.validate import EvaluationInputError

    try:
        yield
    except EvaluationInputError as e:
        raise fail(str(e)) from None


def finish(metrics: dict, out: Path | None, tables) -> None:
    """Print `tables` on stdout and, with `out`, write `metrics` there as JSON and say where."""
    from groundscope.evaluate.report import write_json

    for table in tables:
        stdout.print(table)
    if out is not None:
        write_json(out, metrics)
        stdout.print(f"metrics written to {escape(str(out))}", highlight=False, soft_wrap=True)


def pick_device(name: str) -> str:
    """--device as torch reads it; "auto" is CUDA when there is one, else the CPU."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def expand_images(items: list[Path]) -> list[Path]:
    """Files as given; directories expanded to the image files directly inside them (sorted)."""
    out: list[Path] = []
    for p in items:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def require_images(items: list[Path]) -> list[Path]:
    """`expand_images`, or a one-line error when nothing is left."""
    paths = expand_images(items)
    if not paths:
        raise fail("no images given (directories are searched for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return paths


def parse_classes(classes: Optional[str], classes_file: Optional[Path]) -> list[str]:
    """Comma-separated names and/or a file with one name per line (blank lines and # comments skipped)."""
    names: list[str] = []
    if classes:
        names += [c.strip() for c in classes.split(",") if c.strip()]
    if classes_file is not None:
        try:
            lines = classes_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise fail(f"cannot read --classes-file '{classes_file}': {e.strerror or e}")
        names += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise fail("no classes given; pass --classes \"cat,remote control\" or --classes-file FILE")
    return names


def load_model(model: str, device_name: str, precision: str = "fp32"):
    """A detector by registry name, hub id or folder, with a spinner; a model that does not load is one line and
    exit code 2."""
    from groundscope.models.fast.precision import PRECISIONS
    from groundscope.models.loading import ModelLoadError, load_detector

    if precision not in PRECISIONS:
        raise fail(f"--precision '{precision}': use one of {', '.join(PRECISIONS)}")
    try:
        with console.status(f"loading {model} ..."):
            return load_detector(model, device=pick_device(device_name), precision=precision)
    except ModelLoadError as e:
        raise fail(str(e))


def load_segmenter_for(segmenter: str | None, model: str, device_name: str):
    """The segmenter `--masks` uses (`--segmenter`, else the detector's default pairing), with a spinner; one that
    does not load is one line and exit code 2."""
    from groundscope.models.hub import ModelLoadError
    from groundscope.models.segmenter import default_segmenter, load_segmenter

    name = segmenter or default_segmenter(model)
    try:
        with console.status(f"loading segmenter {name} ..."):
            return load_segmenter(name, device=pick_device(device_name))
    except ModelLoadError as e:
        raise fail(str(e))


def progress() -> Progress:
    """The progress bar every long command shows: description, bar, n/total, elapsed, remaining."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def parse_box(text: str) -> list[float]:
    """`groundscope.answers.parse_box`, its error as a typer.BadParameter (usage error, exit code 2)."""
    try:
        return answers.parse_box(text)
    except answers.RegionTextError as e:
        raise typer.BadParameter(str(e)) from None


def parse_points(text: str) -> list[list[float]]:
    """`groundscope.answers.parse_points`, its error as a typer.BadParameter (usage error, exit code 2)."""
    try:
        return answers.parse_points(text)
    except answers.RegionTextError as e:
        raise typer.BadParameter(str(e)) from None
