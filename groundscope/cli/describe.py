"""``groundscope describe``: detailed descriptions of regions of an image or a video (Describe Anything).

    groundscope describe photo.jpg --box 10,20,200,240 [--box ...] [--json] [--out photo_described.png]
    groundscope describe photo.jpg --mask cat.png | --points "120,80;130,95"
    groundscope describe photo.jpg --expression "the cat on the left" [--detector nano]
    groundscope describe clip.mp4 --box 10,20,200,240 [--frames 8]           (the box on every frame)
    groundscope describe frames/ --expression "the red car" --track          (the box found frame by frame)
    groundscope describe clip.mp4 --box 10,20,200,240 --frame 0 --video-segmenter sam2.1-hiera-tiny
                                  (the official video pipeline: the region on one frame, propagated by SAM 2)

Prints one line per region (``source<TAB>x1,y1,x2,y2<TAB>text``), or with --json one object
``{"image", "width", "height", "model", "regions": [{"name", "box", "area", "text", "error", ...}]}``; --out writes
the image (for a video, its sampled frames side by side) with the regions outlined and numbered, and their texts
below. Exit codes: 0 every region described, 1 some region (or the image) failed, 2 bad arguments or model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from groundscope.answers import describe_record, region_name
from groundscope.cli.common import (
    DeviceOpt,
    console,
    fail,
    load_model,
    load_segmenter_for,
    parse_box,
    parse_points,
    pick_device,
    progress,
)


def _annotated_video(clip, results, outline_regions, text_panel, stack_below, texts):
    """The sampled frames side by side (scaled to fit 1600 px), each with every region's mask of that frame."""
    from PIL import Image

    tiles = []
    for k, frame in enumerate(clip.frames):
        masks = [r.mask[k] if isinstance(r.mask, list) else None for r in results]
        boxes = [r.frame_boxes[k] if r.frame_boxes else None for r in results]
        tiles.append(outline_regions(frame, masks, boxes))
    scale = min(1.0, 1600 / sum(t.width for t in tiles))
    gap = 4
    tiles = [t.resize((max(1, round(t.width * scale)), max(1, round(t.height * scale)))) for t in tiles]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)),
                      (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + gap
    return stack_below(strip, text_panel(strip.width, texts))


def _clip_at(source: Path, indices: list[int]):
    """A `VideoClip` of the frames `indices` of `source` (streamed: only those are kept), for the picture."""
    from groundscope.describe.video import VideoClip
    from groundscope.track.errors import TrackError
    from groundscope.track.frames import open_video

    wanted, kept, total = set(indices), {}, 0
    try:
        for t, image in enumerate(open_video(source)):
            total = t + 1
            if t in wanted:
                kept[t] = image
    except TrackError:
        pass  # the describer has reported the unreadable video on its region
    return VideoClip([kept[t] for t in indices if t in kept], [t for t in indices if t in kept], total, str(source))


def register(app: typer.Typer) -> None:
    """Add the ``describe`` command to `app`."""

    @app.command("describe")
    def describe_cmd(
        source: Path = typer.Argument(..., help="An image, a video file, or a folder of a video's frames."),
        model: str = typer.Option("dam-nano", "--model", "-m", help="DAM registry name (dam-nano, dam-3b, "
                                  "dam-3b-video), hub id (nvidia/DAM-3B) or local DAM folder."),
        box: list[str] = typer.Option([], "--box", help="x1,y1,x2,y2 pixel box of a region (repeatable)."),
        mask: list[Path] = typer.Option([], "--mask", help="Mask image of the image's size, non-zero inside "
                                        "(repeatable); for a video, one for every frame or a folder with one per "
                                        "frame."),
        points: list[str] = typer.Option([], "--points", help="\"x,y;x,y\": clicks on one region (repeatable)."),
        scribble: list[Path] = typer.Option([], "--scribble", help="An image of the image's size, non-zero on "
                                            "strokes drawn over one region (repeatable); with --segmenter, 8 of "
                                            "its pixels prompt SAM as the official demo does."),
        segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Turn --box / --points / --scribble "
                                                "(and --expression's box) into a SAM mask first, as the official "
                                                "pipeline does: sam-vit-base, sam2.1-hiera-tiny, edgetam, a SAM folder "
                                                "..."),
        expression: Optional[str] = typer.Option(None, "--expression", "-e", help="Find the region with the "
                                                 "detector's referring-expression top-1 box, then describe it."),
        detector: str = typer.Option("nano", "--detector", help="Detector for --expression (a `groundscope "
                                     "models` name, hub id or folder)."),
        track: bool = typer.Option(False, "--track", help="Video with --expression: find the box in every sampled "
                                   "frame (default: in the first, used for all)."),
        frames: Optional[int] = typer.Option(None, "--frames", min=1, help="Frames sampled uniformly from a video "
                                             "(default: the model's, 8)."),
        video_segmenter: Optional[str] = typer.Option(None, "--video-segmenter", help="Video: give one region "
                                                      "(or --expression) on --frame and propagate it with this SAM "
                                                      "2-family video model (sam2.1-hiera-tiny, edgetam, a folder), "
                                                      "as the official demo_video.py; frames are sampled among those "
                                                      "where its mask is not empty."),
        frame: int = typer.Option(0, "--frame", min=0, help="With --video-segmenter: the 0-based frame the region "
                                  "is on."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the annotated image here (PNG; a "
                                           "folder gets <stem>.png)."),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Generation budget "
                                                     "(default: the model's)."),
        temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature "
                                                    "(default: the model's, 0.2; 0 is greedy)."),
        top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Nucleus sampling "
                                              "(default: the model's, 0.5; 1 is none)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed Python, NumPy and torch once before the "
                                           "first region."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Named generation settings: dlc-bench (the "
                                             "published DLC-Bench run: temperature 0.2, no top-p, seed 123), "
                                             "official-default, greedy; the options above win over it."),
        device: str = DeviceOpt,
        precision: str = typer.Option("fp32", "--precision", help="The --expression detector's precision: fp32 or "
                                      "bf16 (faster on CPUs with bf16 support)."),
    ) -> None:
        """Describe Anything: a detailed description of each region (box, mask, points or expression)."""
        from groundscope.describe.api import (
            RegionDescription,
            frame_files,
            is_video_source,
            load_describer,
            load_video,
        )
        from groundscope.images import ImageLoadError, load_image
        from groundscope.models.loading import ModelLoadError
        from groundscope.prompts import PromptError
        from groundscope.visualize import annotate_regions, outline_regions, stack_below, text_panel

        regions = ([{"box": parse_box(b)} for b in box] + [{"mask": m} for m in mask]
                   + [{"points": parse_points(p)} for p in points] + [{"scribble": s} for s in scribble])
        if expression is not None and not expression.strip(" ."):
            raise fail("--expression is empty; pass the words that single out one object")
        if expression is not None and regions:
            raise fail("give either --expression or regions (--box / --mask / --points / --scribble), not both")
        if expression is None and not regions:
            raise fail("no region given; pass --box x1,y1,x2,y2, --mask mask.png, --points \"x,y;x,y\", "
                       "--scribble strokes.png or --expression \"the cat on the left\"")
        if not source.exists():
            console.print(f"[red]failed:[/] cannot read '{escape(str(source))}': no such file or folder",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        video = is_video_source(source)
        if track and (expression is None or not video):
            raise fail("--track finds the box frame by frame from --expression in a video or frame folder; give both")
        if video_segmenter is not None and (not video or len(regions) > 1 or track):
            raise fail("--video-segmenter propagates one region (or --expression, without --track) given on --frame "
                       "through a video or frame folder; give one of each")
        for r in regions:
            r["name"] = region_name(r)
        from groundscope.describe.model import GENERATION_PRESETS, generation_preset, seed_everything

        if preset is not None and preset not in GENERATION_PRESETS:
            raise fail(f"--preset {preset!r} is not a preset; use one of {', '.join(sorted(GENERATION_PRESETS))}")
        try:
            with console.status(f"loading {model} ..."):
                describer = load_describer(model, device=pick_device(device))
        except ModelLoadError as e:
            raise fail(str(e))
        if segmenter is not None:
            describer.segmenter = load_segmenter_for(segmenter, model, device)
        elif expression is not None or any("box" in r or "points" in r for r in regions):
            describer._noticed = True  # said here once, on the console, instead of as a Python warning
            console.print("[yellow]notice:[/] boxes and points are described through a filled rectangle / small "
                          "discs, not the SAM mask the official pipeline makes; add --segmenter sam-vit-base "
                          "(or a SAM folder)", highlight=False, soft_wrap=True)
        det = load_model(detector, device, precision) if expression is not None else None
        gen = generation_preset(preset) if preset is not None else {}
        gen.update({k: v for k, v in (("max_new_tokens", max_new_tokens), ("temperature", temperature),
                                      ("top_p", top_p), ("seed", seed)) if v is not None})
        if gen.get("seed") is not None:  # once for the whole run, as the official evaluation (~126-132)
            seed_everything(int(gen["seed"]))
        gen.pop("seed", None)
        size: tuple[int, int] | tuple[None, None] = (None, None)  # (width, height) once the image is read
        video_info: dict = {}
        vs = None
        if video_segmenter is not None:
            from groundscope.models.hub import ModelLoadError as SegmenterLoadError
            from groundscope.models.video_segmenter import load_video_segmenter

            try:
                with console.status(f"loading {video_segmenter} ..."):
                    vs = load_video_segmenter(video_segmenter, device=pick_device(device))
            except SegmenterLoadError as e:
                raise fail(str(e))
        try:
            if vs is not None:
                with console.status("propagating the region and describing ..."):
                    res = describer.describe_video(source, regions[0] if regions else None, expression=expression,
                                                   detector=det, frame=frame, segmenter=vs,
                                                   num_frames=frames, **gen)
                results = [res]
                clip = _clip_at(source, res.frames or [])
                if clip.frames:
                    h, w = clip.frames[0].shape[:2]
                    size = (w, h)
                video_info = {"frames": res.frames or [], "total_frames": clip.total}
            elif video:
                clip = load_video(source, frames or describer.config.num_frames)
                for r in regions:  # a folder of masks: one per frame, in name order
                    if isinstance(r.get("mask"), Path) and r["mask"].is_dir():
                        r["per_frame"] = [{"mask": f, "name": r["name"]} for f in frame_files(r["mask"])]
                h, w = clip.frames[0].shape[:2]
                size, video_info = (w, h), {"frames": clip.indices, "total_frames": clip.total}
                items = [("expression", expression)] if expression is not None else [("region", r) for r in regions]
                results: list[RegionDescription] = []
                with progress() as bar:
                    task = bar.add_task("describe", total=len(items))
                    for kind, item in items:
                        if kind == "expression":
                            res = describer.describe_video(clip, expression=item, detector=det, track=track, **gen)
                        else:
                            res = describer.describe_video(clip, item["per_frame"] if "per_frame" in item else item,
                                                           **gen)
                        results.append(res)
                        bar.advance(task)
            else:
                try:
                    image = load_image(source)
                    size = (image.width, image.height)
                except ImageLoadError:
                    image = source  # the describer reports it on every region
                with progress() as bar:
                    n = 1 if expression is not None else len(regions)
                    task = bar.add_task("describe", total=n)
                    if expression is not None:
                        results = [describer.describe_expression(image, expression, det, **gen)]
                        bar.advance(task)
                    else:
                        results = describer.describe(image, regions, batch_size=4,
                                                     callback=lambda k: bar.advance(task, k), **gen)
        except ImageLoadError as e:
            console.print(f"[red]failed:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        except PromptError as e:
            raise fail(str(e))

        record = describe_record(str(source), describer.name, *size, results, **video_info)
        if as_json:
            print(json.dumps(record), flush=True)
        else:
            for r in results:
                if r.ok:
                    where = ",".join(f"{v:.0f}" for v in r.box) if r.box is not None else "-"
                    print(f"{source}\t{where}\t{r.text}", flush=True)
        failed = [r for r in results if not r.ok]
        for r in failed:
            console.print(f"[yellow]not described:[/] {escape(r.error)}", highlight=False, soft_wrap=True)

        if out is not None and "width" in record and (vs is None or results[0].ok):
            texts = [r.text if r.ok else f"(not described: {r.error})" for r in results]
            texts = [f"{r.expression} ({r.score:.2f}): {t}" if r.expression and r.score is not None else t
                     for r, t in zip(results, texts)]
            if video:
                picture = _annotated_video(clip, results, outline_regions, text_panel, stack_below, texts)
            else:
                picture = annotate_regions(image, [r.mask for r in results], texts, [r.box for r in results])
            target = out / f"{source.stem}.png" if out.is_dir() or not out.suffix else out
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.save(target)
            console.print(f"annotated image written to [bold]{target}[/]", highlight=False)
        if failed:
            raise typer.Exit(1)
