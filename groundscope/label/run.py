"""`label_images`: plan the chunks, reuse what the resume log holds, run the rest, write the dataset.

The chunks that still need work go to an *executor*, a function ``chunks -> iterator of chunk records`` that
may yield in any order: `local_executor` runs them here one after another, `groundscope.label.ray_pipeline.
ray_executor` on a Ray cluster. Every record is logged as it arrives; the final file is assembled from the log
in input order, so it does not depend on which executor ran, in what order chunks finished, or how many runs it
took.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from groundscope.images import ImageLoadError
from groundscope.label.partial import PartialLog, partial_path
from groundscope.label.work import Chunk, LabelError, LabelSettings, label_chunk, open_image, plan_chunks
from groundscope.label.writer import FORMATS, keeps_box, write_labels

Executor = Callable[[list[Chunk]], Iterator[dict[str, Any]]]

__all__ = ["LabelError", "LabelReport", "label_images", "local_executor"]


@dataclass
class LabelReport:
    """What a labelling run did.

    Attributes:
        files: the files written (the dataset, and for ODVG its label map).
        labelled: images in the dataset.
        annotations: boxes in the dataset.
        failures: one message per unreadable image (naming it), in input order.
        reused: images whose results came from the resume log instead of the model.
        computed: images this run put through the model (including ones that failed to load).
    """

    files: list[Path] = field(default_factory=list)
    labelled: int = 0
    annotations: int = 0
    failures: list[str] = field(default_factory=list)
    reused: int = 0
    computed: int = 0


def local_executor(settings: LabelSettings, load_detector: Callable[[], Any]) -> Executor:
    """Run chunks in this process, in order; the model is loaded only if there is work (a rerun of a finished
    job does not pay for it)."""
    from groundscope.models.hub import ModelLoadError
    from groundscope.prompts import PromptError

    def execute(chunks: list[Chunk]) -> Iterator[dict[str, Any]]:
        if not chunks:
            return
        detector = load_detector()
        for chunk in chunks:
            try:
                yield label_chunk(detector, chunk, settings)
            except (PromptError, ModelLoadError) as e:  # a bad prompt, or a --segmenter that does not load
                raise LabelError(str(e)) from e

    return execute


def dataset_filename(location: str, root: str) -> str:
    """The image's path relative to the dataset file's folder (``/` separators), or absolute when it has none
    (another drive on Windows)."""
    try:
        return Path(os.path.relpath(location, root)).as_posix()
    except ValueError:
        return Path(location).as_posix()


def _still_fails(record: dict[str, Any], chunk: Chunk) -> bool:
    """A logged chunk is reused unless one of its unreadable images reads now (then the whole chunk is redone,
    so that image is detected together with its chunk, as an uninterrupted run would)."""
    for f in record["failures"]:
        pos = int(f["pos"])
        try:
            open_image(chunk.images[pos], chunk.locations[pos])
        except ImageLoadError:
            continue
        return False
    return True


def label_images(
    paths: Sequence[str | Path],
    out: str | Path,
    fmt: str,
    settings: LabelSettings,
    *,
    executor: Executor | None = None,
    label_map: str | Path | None = None,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> LabelReport:
    """Label ``paths`` (image files, in the order given) with ``settings`` and write ``out`` as ``fmt``.

    Args:
        paths: image files (expand folders first, e.g. with ``groundscope.cli.common.expand_images``).
        out: the dataset file; ``out.partial.jsonl`` beside it logs finished chunks while the run lasts.
        fmt: "coco" or "odvg".
        settings: model, classes, thresholds and batch size (a resumed run must use the same).
        executor: where chunks run (default: `local_executor` loading ``settings.model`` on ``device``).
        label_map: ODVG only: where the label map goes (default ``label_map.json`` beside ``out``).
        device: for the default executor.
        on_progress: called with (images done, total) at the start and after every chunk.
        on_failure: called with the message of each unreadable image as this run meets it.
    Returns:
        a `LabelReport`. The resume log is deleted when every image was labelled; it is kept while some fail,
        so a rerun after fixing them redoes only their chunks.
    Raises:
        LabelError: bad arguments, a resume log from other settings, or a model/prompt that fails.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise LabelError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not paths:
        raise LabelError("no images given")
    if out.is_dir():
        raise LabelError(f"--out '{out}' is a folder; give the dataset file to write, e.g. {out / 'labels.json'}")
    if executor is None:
        from groundscope.models.loading import load_detector

        executor = local_executor(settings, lambda: load_detector(settings.model, device=device,
                                                                         precision=settings.precision))

    report = LabelReport()
    # A file name that is not UTF-8 (held by Python as surrogate escapes) cannot go into a JSON dataset file:
    # that image is reported, the others are labelled.
    named, unnamable = [], []
    for p in paths:
        (named if _utf8(str(p)) else unnamable).append(p)
    for p in unnamable:
        shown = os.fsencode(str(p)).decode("utf-8", "backslashreplace")
        message = str(ImageLoadError(shown, "its file name is not valid UTF-8, which a COCO / ODVG file cannot hold; "
                                            "rename it (e.g. convmv -f latin1 -t utf8 --notest FILE)"))
        report.failures.append(message)
        if on_failure:
            on_failure(message)
    paths = named
    if not paths:
        raise LabelError("no image with a UTF-8 file name given; rename the files")
    chunks = plan_chunks(paths, settings.batch_size)
    total = len(paths)
    records: dict[int, dict[str, Any]] = {}
    with PartialLog(partial_path(out), settings) as log:
        pending = []
        for chunk in chunks:
            logged = log.done.get(chunk.locations)
            if logged is not None and _still_fails(logged, chunk):
                records[chunk.index] = logged
                report.reused += len(chunk.images)
            else:
                pending.append(chunk)
        done = report.reused
        if on_progress:
            on_progress(done, total)
        stream = executor(pending)
        try:
            for record in stream:
                log.append(record)
                records[int(record["chunk"])] = record
                n = len(record["images"])
                done += n
                report.computed += n
                if on_failure:
                    for f in record["failures"]:
                        on_failure(f["error"])
                if on_progress:
                    on_progress(done, total)
        finally:
            # Close the executor's generator now, not when the traceback lets go of it: that is what shuts
            # down a Ray cluster it started, also on Ctrl-C or an error here.
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        missing = [c.index for c in chunks if c.index not in records]
        if missing:
            raise LabelError(f"the executor returned no results for chunk(s) {missing}; rerun to resume")

        root = os.path.abspath(out.parent)
        labelled = []
        for chunk in chunks:  # input order, whatever order the chunks finished in
            record = records[chunk.index]
            for r in sorted(record["results"], key=lambda r: r["pos"]):
                labelled.append({"file_name": dataset_filename(chunk.locations[r["pos"]], root),
                                 "width": r["width"], "height": r["height"], "detections": r["detections"]})
            # Messages name the image as given in this run (a logged chunk may come from another folder).
            for f in sorted(record["failures"], key=lambda f: f["pos"]):
                report.failures.append(str(ImageLoadError(chunk.images[f["pos"]], f["reason"])))

        info = {"description": "groundscope label", "model": settings.model, "box_threshold": settings.box_threshold,
                "max_detections": settings.max_detections, "nms": settings.nms}
        if settings.masks:
            info["segmenter"] = settings.segmenter or "default"
        if settings.slicing is not None:
            info["slicing"] = settings.slicing.record()
        report.files = write_labels(out, fmt, labelled, settings.classes, info, label_map, settings.polygons)
        report.labelled = len(labelled)
        report.annotations = sum(keeps_box(d["box"]) for im in labelled for d in im["detections"])
        if not report.failures:
            log.remove()
    return report


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

