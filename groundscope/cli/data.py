"""``groundscope synth`` and ``groundscope convert``: the data commands, added to the main app by `register`.

    groundscope synth --out DIR --n 200 --seed 0 --split train|test [--regions] [--small [--size 2048x2048]]
    groundscope synth-regions DIR [--out FILE] [--no-verify]
    groundscope synth-video --out DIR --n 4 --frames 60 --seed 0 [--size 480x360] [--no-video]
    groundscope convert IN OUT [--from coco|odvg|refexp|groundingcap] [--to ...] [--label-map F]
                               [--skip-invalid] [--odvg-mode auto|det|grounding] [--out-label-map F]

Bad input prints one line naming the file and line/record (``error: ann.jsonl:12: bbox ...``) and exits
with code 2.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from groundscope.cli.common import fail
from groundscope.data.convert import convert
from groundscope.data.errors import DataFormatError
from groundscope.data.synth import generate_world, write_world_regions


class Split(str, Enum):
    train = "train"
    test = "test"


class Format(str, Enum):
    coco = "coco"
    odvg = "odvg"
    refexp = "refexp"
    groundingcap = "groundingcap"


class OdvgMode(str, Enum):
    auto = "auto"
    det = "det"
    grounding = "grounding"


def synth(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 0,
    split: Annotated[Split, typer.Option("--split", help="train: base classes; test: base + novel.")] = Split.train,
    regions: Annotated[bool, typer.Option(
        "--regions", help="Also write regions.json: each object's exact mask (COCO RLE) and description, "
                          "Describe Anything's training data.")] = False,
    small: Annotated[bool, typer.Option(
        "--small", help="The large-image world for sliced inference: 2048x2048 canvases (see --size) with "
                        "24-48 objects, most of them small (16-26 px).")] = False,
    size: Annotated[Optional[str], typer.Option(
        "--size", help="With --small: the canvas WIDTHxHEIGHT in pixels (default 2048x2048; the object count "
                       "scales with the area).")] = None,
) -> None:
    """Generate the synthetic grounding world: images plus COCO, ODVG, GroundingCap and refexp files."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from groundscope.data.synth import parse_canvas, small_layout

    layout = None
    if size is not None and not small:
        raise fail("--size goes with --small (the default world draws each image 320-640 px a side); add --small")
    if small:
        try:
            dims = parse_canvas(size) if size is not None else None
            layout = small_layout(dims)
        except ValueError as e:
            raise fail(f"--size: {e}")

    with Progress(TextColumn("[bold]synth {task.fields[split]}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("synth", total=n, split=split.value)
        try:
            summary = generate_world(out, n, seed, split.value,
                                     progress=lambda done, total: bar.update(task, completed=done), regions=regions,
                                     layout=layout)
        except OSError as e:
            raise fail(f"{e.filename or out}: {e.strerror or e}")
    typer.echo(f"wrote {summary['images']} images, {summary['objects']} objects "
               f"({summary['novel_objects']} novel), {summary['refexps']} referring expressions to {summary['out']} "
               f"in {summary['seconds']:.1f} s ({summary['images_per_second']} images/s)")
    typer.echo("files: " + ", ".join(summary["files"]))


def synth_regions(
    world: Annotated[Path, typer.Argument(help="A folder `groundscope synth` wrote (meta.json, images/).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output file (default: WORLD/regions.json).")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify",
                                         help="Check every redrawn image against its PNG.")] = True,
) -> None:
    """Write regions.json for an existing synthetic world: exact object masks (COCO RLE) + descriptions."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]synth-regions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("regions", total=None)
        try:
            summary = write_world_regions(world, out, verify,
                                          progress=lambda done, total: bar.update(task, completed=done, total=total))
        except ValueError as e:
            raise fail(str(e))
        except OSError as e:
            raise fail(f"{e.filename or world}: {e.strerror or e}")
    typer.echo(f"wrote {summary['regions']} regions of {summary['images']} images to {summary['out']} "
               f"in {summary['seconds']:.1f} s")


def synth_video(
    out: Annotated[Path, typer.Option("--out", help="Output directory (MOTChallenge layout + annotations.json).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of clips.")] = 4,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames per clip.")] = 60,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 0,
    size: Annotated[str, typer.Option("--size", help="Frame size WIDTHxHEIGHT.")] = "480x360",
    video: Annotated[bool, typer.Option("--video/--no-video", help="Also write <clip>.mp4 (lossless H.264, "
                                        "needs PyAV).")] = True,
) -> None:
    """Generate synthetic video clips: the still world's shapes moving, occluding, entering and leaving, with
    exact per-frame masks, boxes and track ids (MOTChallenge gt.txt and COCO-VID annotations.json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from groundscope.data.synth_video import generate_video_world, parse_size

    try:
        width, height = parse_size(size)
    except ValueError as e:
        raise fail(f"--size: {e}")
    with Progress(TextColumn("[bold]synth-video"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("clips", total=n)
        try:
            summary = generate_video_world(out, n, frames, seed, (width, height), video=video,
                                           progress=lambda done, total: bar.update(task, completed=done))
        except OSError as e:
            raise fail(f"{e.filename or out}: {e.strerror or e}")
    v = summary["video"]
    how = f"mp4 {v['codec']} crf {v['options']['crf']}" if v["written"] else f"no mp4: {v['reason']}"
    typer.echo(f"wrote {summary['clips']} clips, {summary['frames']} frames, {summary['tracks']} tracks, "
               f"{summary['annotations']} annotations to {summary['out']} ({how}) in {summary['seconds']:.1f} s")


def convert_cmd(
    src: Annotated[Path, typer.Argument(help="Input annotation file.")],
    dst: Annotated[Path, typer.Argument(help="Output annotation file.")],
    src_format: Annotated[Format | None, typer.Option("--from", help="Input format (inferred if omitted).")] = None,
    dst_format: Annotated[Format | None, typer.Option("--to", help="Output format (inferred if omitted).")] = None,
    label_map: Annotated[Path | None, typer.Option("--label-map", help="Label map of ODVG detection input.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip and count malformed records.")] = False,
    odvg_mode: Annotated[OdvgMode, typer.Option("--odvg-mode", help="ODVG output records.")] = OdvgMode.auto,
    out_label_map: Annotated[Path | None, typer.Option(
        "--out-label-map", help="Where ODVG detection output writes its label map (default: beside OUT).")] = None,
) -> None:
    """Convert annotations between COCO, ODVG, RefCOCO (MDETR) and GroundingCap."""
    try:
        summary = convert(src, dst, src_format.value if src_format else None,
                          dst_format.value if dst_format else None, label_map, skip_invalid, odvg_mode.value,
                          out_label_map)
    except DataFormatError as e:
        raise fail(str(e))
    except ValueError as e:  # a record the target format cannot hold (e.g. no class name for COCO)
        raise fail(f"{src}: {e}")
    typer.echo(f"converted {summary['records']} records {summary['from']} -> {summary['to']}"
               f" (skipped {summary['skipped']} invalid): {', '.join(summary['written'])}")


def register(app: typer.Typer) -> None:
    """Add the ``synth``, ``synth-regions``, ``synth-video`` and ``convert`` commands to ``app``."""
    app.command("synth")(synth)
    app.command("synth-regions")(synth_regions)
    app.command("synth-video")(synth_video)
    app.command("convert")(convert_cmd)
