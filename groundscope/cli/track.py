"""``groundscope track``: follow what the text names through a video, one id and one class per object.

    groundscope track VIDEO --classes "car,person" [--model M] [--segmenter sam2.1-hiera-tiny] [--every 10]
    groundscope track VIDEO --expression "the red car" [--segmenter S]
    groundscope track VIDEO --box x1,y1,x2,y2 --frame K --segmenter S
    options: [--max-lost 10] [--match-iou 0.5] [--min-hits 5] [--interpolate 5] [--box-threshold 0.3] [--out DIR] [--device cpu]

VIDEO is a video file, or a folder of its frames. Writes DIR/tracks.txt (MOTChallenge: frame,id,x,y,w,h,score,
-1,-1,-1 with frames and bb_left/bb_top from 1, as MOTChallenge), DIR/tracks.json (each track: class, score, and per frame its box and RLE mask) and
DIR/tracks.mp4 (the video with each track's mask, box and #id). Without --segmenter the detector runs on every frame
and its boxes are linked by box overlap (no masks). Exit codes: 0 done, 2 bad arguments, input or model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from groundscope.cli.common import DeviceOpt, ModelOpt, PrecisionOpt, console, fail, load_model, parse_box, \
    parse_classes, pick_device


def register(app: typer.Typer) -> None:
    """Add the ``track`` command to `app`."""

    @app.command("track")
    def track_cmd(
        video: Path = typer.Argument(..., help="A video file or a folder of its frames (image files, by name)."),
        classes: Optional[str] = typer.Option(None, "--classes", "-c", help='Comma-separated class names, e.g. '
                                              '"car,person".'),
        classes_file: Optional[Path] = typer.Option(None, "--classes-file", help="A file with one class per line."),
        model: str = ModelOpt,
        segmenter: Optional[str] = typer.Option(None, "--segmenter", help="A SAM 2-family video model to propagate "
                                                "masks with (sam2.1-hiera-tiny/small/base-plus/large, edgetam, sam3, "
                                                "a hub id or folder). Without it: detect every frame, link boxes by "
                                                "overlap."),
        every: int = typer.Option(10, "--every", min=1, help="With --segmenter: detect on frame 0 and every N "
                                  "frames; new objects start on these keyframes."),
        expression: Optional[str] = typer.Option(None, "--expression", "-e", help="Follow the one object this "
                                                 "referring expression names (found on the first frame)."),
        box: Optional[str] = typer.Option(None, "--box", help="x1,y1,x2,y2 pixels: follow this region (needs "
                                          "--segmenter), given on --frame."),
        frame: int = typer.Option(0, "--frame", min=0, help="The 0-based frame --box is on."),
        max_lost: int = typer.Option(10, "--max-lost", min=1, help="Frames a track may go unseen before it ends."),
        match_iou: float = typer.Option(0.5, "--match-iou", min=0.0, max=1.0, help="IoU a detection needs with a "
                                        "track to continue it (mask IoU with --segmenter, else box IoU)."),
        min_hits: int = typer.Option(5, "--min-hits", min=1, help="Drop tracks seen on fewer frames (one-off false "
                                     "detections)."),
        interpolate: int = typer.Option(5, "--interpolate", min=0, help="Without --segmenter: fill a track's gaps of "
                                        "up to N frames on the line between its boxes (0: off)."),
        box_threshold: float = typer.Option(0.3, "--box-threshold", "-t", min=0.0, max=1.0, help="Minimum "
                                            "detection score."),
        out: Path = typer.Option(Path("groundscope_track"), "--out", "-o", help="Directory for tracks.txt, "
                                 "tracks.json and tracks.mp4."),
        device: str = DeviceOpt,
        precision: str = PrecisionOpt,
    ) -> None:
        """Track objects named by text through a video (detector + SAM 2 memory, or box-overlap linking)."""
        from groundscope.models.hub import ModelLoadError
        from groundscope.models.segmenter import PromptError
        from groundscope.track import TrackError, track
        from groundscope.track.frames import open_video

        region = parse_box(box) if box is not None else None
        if region is not None and expression is not None:
            raise fail("give --box or --expression, not both")
        if region is not None and segmenter is None:
            raise fail("--box needs --segmenter (e.g. --segmenter sam2.1-hiera-tiny) to carry the region from frame "
                       "to frame")
        names = parse_classes(classes, classes_file) if region is None and expression is None else []
        if expression is not None and not expression.strip(" ."):
            raise fail("--expression is empty; pass the words that single out one object")
        try:
            frames = open_video(video)
        except TrackError as e:
            raise fail(str(e))
        if region is not None and frames.count is not None and frame >= frames.count:
            raise fail(f"--frame {frame} is past the end of {video} ({frames.count} frames); give a frame below "
                       f"{frames.count}")
        detector = load_model(model, device, precision) if region is None else None
        vs = None
        if segmenter is not None:
            from groundscope.models.video_segmenter import load_video_segmenter

            try:
                with console.status(f"loading segmenter {segmenter} ..."):
                    vs = load_video_segmenter(segmenter, device=pick_device(device))
            except ModelLoadError as e:
                raise fail(str(e))
        try:
            tracks = track(frames, names, detector=detector, segmenter=vs, every=every, expression=expression,
                           box=region, frame=frame, max_lost=max_lost, match_iou=match_iou,
                           min_hits=min_hits, interpolate=interpolate,
                           box_threshold=box_threshold, progress=True)
        except (TrackError, PromptError) as e:
            raise fail(str(e))
        out.mkdir(parents=True, exist_ok=True)
        tracks.write_mot(out / "tracks.txt")
        tracks.write_json(out / "tracks.json")
        with console.status("writing tracks.mp4 ..."):
            tracks.write_video(out / "tracks.mp4")
        console.print(f"[green]{len(tracks.ids)}[/] track(s) over {len(tracks)} frame(s) written to [bold]{out}[/] "
                      "(tracks.txt, tracks.json, tracks.mp4)", highlight=False)
