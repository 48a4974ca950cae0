"""``groundscope eval ...``: score results files with the official protocols, or run a model over a dataset.

The main CLI mounts this as ``app.add_typer(eval_app, name="eval")``. Every command prints a table and, with
``--out FILE``, writes the metrics as JSON. A bad input file prints one line naming the file and the record
and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from groundscope.cli.common import console, fail, finish, input_errors, stdout
from groundscope.evaluate.coco import evaluate_coco
from groundscope.evaluate.lvis import evaluate_lvis
from groundscope.evaluate.odinw import BUILTIN_MANIFESTS, evaluate_odinw, load_odinw_manifest
from groundscope.evaluate.phrase import evaluate_phrase
from groundscope.evaluate.plot import draw_pr_curve
from groundscope.evaluate.refexp import OVERLAPS, evaluate_refexp
from groundscope.evaluate.report import coco_tables, lvis_tables, metrics_table, odinw_table, write_json
from groundscope.evaluate.run import DATASET_KINDS, DETECTION_KINDS, JOURNAL, run_evaluation
from groundscope.evaluate.protocols import PLAIN, official_settings
from groundscope.slicing.tiles import OPTION_HELP as SLICE_HELP

eval_app = typer.Typer(
    name="eval",
    help="Score detection / grounding results as the official tools do, or run a model over a dataset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

GtArg = typer.Argument(..., help="Ground-truth annotation file (JSON).", show_default=False)
ResultsArg = typer.Argument(..., help="Results file (JSON list).", show_default=False)
OutOpt = typer.Option(None, "--out", "-o", help="Write the metrics to this JSON file.")


def model_loader(model: str, device: str, precision: str = "fp32"):
    """A function that loads `model` when called: the evaluations call it only after the annotations and images
    are checked, and only if work is left. A model that does not load is one line and exit code 2."""
    if precision not in ("fp32", "bf16"):
        raise fail(f"--precision must be fp32 or bf16, not {precision!r}")
    # Only a non-default precision is passed on, so a plain load_detector(name, device) is all fp32 needs.
    extra = {} if precision == "fp32" else {"precision": precision}

    def load():
        import groundscope  # looked up at call time, so callers and tests may swap `groundscope.load_detector`

        try:
            return groundscope.load_detector(model, device=device, **extra)
        except Exception as e:  # the CLI boundary: whatever stops the model loading, say it in one line
            raise fail(f"cannot load model {model!r}: {e}") from None

    return load


def parse_max_dets(text: str | None) -> tuple[int, int, int] | None:
    """'100,300,1000' -> (100, 300, 1000); None stays None. A bad value is one line and exit code 2."""
    if text is None:
        return None
    try:
        caps = tuple(int(v) for v in text.split(","))
    except ValueError:
        caps = ()
    if len(caps) != 3 or any(c < 1 for c in caps):
        raise fail(f"--max-dets takes three positive caps such as 100,300,1000 (mmdetection) or 1,10,100 (COCO), "
                   f"not {text!r}")
    return caps


MaxDetsOpt = typer.Option(None, "--max-dets", help="pycocotools' three per-image caps: 1,10,100 (COCO, the default "
                          "here) or 100,300,1000 (mmdetection's CocoMetric, which produced the MM-GDINO / LLMDet "
                          "tables).")


@eval_app.command()
def coco(
    annotations: Path = GtArg,
    results: Path = ResultsArg,
    out: Path | None = OutOpt,
    iou_type: list[str] | None = typer.Option(
        None, "--iou-type", help="bbox and/or segm (default: bbox, plus segm when the results carry masks)."
    ),
    per_class: bool = typer.Option(False, "--per-class", help="Also print the per-class AP table."),
    plot: Path | None = typer.Option(None, "--plot", help="Draw the precision/recall curve to this PNG."),
    max_dets: str | None = MaxDetsOpt,
) -> None:
    """COCO AP: the 12 standard stats (box, and mask when present) and per-class AP."""
    for t in iou_type or []:
        if t not in ("bbox", "segm"):
            raise fail(f"--iou-type must be bbox or segm, not {t!r}")
    caps = parse_max_dets(max_dets)
    with input_errors():
        metrics = evaluate_coco(annotations, results, iou_types=iou_type or None, pr_curve=plot is not None,
                                **({"max_dets": caps} if caps else {}))
    if plot is not None and metrics.get("pr_curve"):
        draw_pr_curve(metrics["pr_curve"], plot, f"COCO {metrics['iou_type']}: {results.name}")
    finish(metrics, out, coco_tables(metrics, per_class=per_class))


@eval_app.command()
def lvis(
    annotations: Path = GtArg,
    results: Path = ResultsArg,
    out: Path | None = OutOpt,
    max_dets: int = typer.Option(300, "--max-dets", help="Per-image cap of the standard protocol."),
    fixed: bool = typer.Option(True, "--fixed/--no-fixed", help="Also compute fixed AP (Dave et al.)."),
    dets_per_cat: int = typer.Option(10_000, "--dets-per-cat", min=1, help="Per-category cap of fixed AP."),
    per_class: bool = typer.Option(False, "--per-class", help="Also print the per-class AP table."),
    plot: Path | None = typer.Option(None, "--plot", help="Draw the precision/recall curve to this PNG."),
) -> None:
    """LVIS AP with APr/APc/APf (300 detections per image) and fixed AP (10,000 per category)."""
    with input_errors():
        metrics = evaluate_lvis(
            annotations,
            results,
            max_dets=max_dets,
            fixed=fixed,
            max_dets_per_cat=dets_per_cat,
            pr_curve=plot is not None,
        )
    if plot is not None and metrics.get("pr_curve"):
        draw_pr_curve(metrics["pr_curve"], plot, f"LVIS: {results.name}")
    finish(metrics, out, lvis_tables(metrics, per_class=per_class))


@eval_app.command()
def odinw(
    datasets: list[str] | None = typer.Argument(
        None, help="Triples NAME ANNOTATIONS RESULTS, one per dataset.", show_default=False
    ),
    manifest: Path | None = typer.Option(
        None, "--manifest", "-m", help='JSON list of {"name", "annotations", "results"} (paths relative to it).'
    ),
    out: Path | None = OutOpt,
    max_dets: str | None = MaxDetsOpt,
    round_to: int | None = typer.Option(None, "--round", min=0, help="Average the per-dataset values rounded to "
                                        "this many decimals (3: how mmdetection reports them and the papers "
                                        "average them)."),
) -> None:
    """ODinW: COCO AP of each dataset and their average (ODinW13 / ODinW35)."""
    caps = parse_max_dets(max_dets)
    args = datasets or []
    if len(args) % 3:
        raise fail(f"datasets are given as NAME ANNOTATIONS RESULTS triples; got {len(args)} values")
    with input_errors():
        entries = load_odinw_manifest(manifest) if manifest is not None else []
    entries += [(args[i], Path(args[i + 1]), Path(args[i + 2])) for i in range(0, len(args), 3)]
    if not entries:
        raise fail("no datasets: give NAME ANNOTATIONS RESULTS triples or --manifest FILE")
    try:
        metrics = evaluate_odinw(entries, round_to=round_to, **({"max_dets": caps} if caps else {}))
    except ValueError as e:  # bad files (EvaluationInputError) and a repeated dataset name alike
        raise fail(str(e)) from None
    finish(metrics, out, [odinw_table(metrics)])


@eval_app.command()
def refexp(
    annotations: Path = GtArg,
    results: Path = ResultsArg,
    out: Path | None = OutOpt,
    iou: float = typer.Option(0.5, "--iou", min=0.0, max=1.0, help="IoU a box needs to count as correct."),
    overlap: str = typer.Option("iou", "--overlap", help="iou (mmdetection's RefExpMetric) or giou (MDETR's "
                                "evaluator: generalized IoU >= the threshold)."),
) -> None:
    """RefCOCO / RefCOCO+ / RefCOCOg (MDETR format): Precision@1, @5, @10."""
    if overlap not in OVERLAPS:
        raise fail(f"--overlap must be one of {', '.join(OVERLAPS)}, not {overlap!r}")
    with input_errors():
        metrics = evaluate_refexp(annotations, results, iou_threshold=iou, overlap=overlap)
    finish(metrics, out, [metrics_table(f"referring expressions: {annotations.name}", metrics)])


@eval_app.command()
def phrase(
    annotations: Path = GtArg,
    results: Path = ResultsArg,
    out: Path | None = OutOpt,
    protocol: str = typer.Option("any-box", "--protocol", help="any-box (default) or merged (MDETR's merged boxes)."),
    iou: float = typer.Option(0.5, "--iou", min=0.0, max=1.0, help="IoU a box needs to count as correct."),
) -> None:
    """Flickr30k Entities phrase grounding: Recall@1, @5, @10."""
    name = protocol.replace("-", "_")
    if name not in ("any_box", "merged"):
        raise fail(f"--protocol must be any-box or merged, not {protocol!r}")
    with input_errors():
        metrics = evaluate_phrase(annotations, results, iou_threshold=iou, protocol=name)
    finish(metrics, out, [metrics_table(f"phrase grounding ({protocol}): {annotations.name}", metrics)])


@eval_app.command()
def mot(
    gt: Path = typer.Argument(..., help="MOTChallenge ground truth: a gt.txt, a sequence folder (gt/gt.txt), or a "
                              "folder of sequences (<seq>/gt/gt.txt).", show_default=False),
    results: Path = typer.Argument(..., help="Tracker output: a results .txt, or a folder of <seq>.txt.",
                                   show_default=False),
    out: Path | None = OutOpt,
    iou: float = typer.Option(0.5, "--iou", min=0.0, max=1.0, help="IoU a box pair needs to match (MOTA, IDF1; "
                              "HOTA integrates over thresholds)."),
    per_sequence: bool = typer.Option(False, "--per-sequence", help="Also print one row per sequence."),
) -> None:
    """Tracking: MOTA, IDF1, HOTA, ID switches, MOTP, precision/recall (motmetrics + TrackEval)."""
    from groundscope.evaluate.mot import evaluate_mot, mot_tables

    if iou <= 0.0:
        raise fail("--iou must be above 0 (0.5 is MOTChallenge's)")
    with input_errors():
        try:
            metrics = evaluate_mot(gt, results, iou_threshold=iou)
        except ImportError as e:
            raise fail(str(e)) from None
    finish(metrics, out, mot_tables(metrics, per_sequence=per_sequence))


RUN_KINDS = (*DATASET_KINDS, "odinw")


def run_settings(dataset: str, model: str, protocol: str, chunk_size: int | None, max_dets: str | None,
                 rec_rule: str | None, overlap: str | None):
    """The settings of an `eval run`: the official ones of `dataset` (or `PLAIN`), then the options given."""
    import dataclasses

    if protocol not in ("official", "plain"):
        raise fail(f"--protocol must be official or plain, not {protocol!r}")
    base = official_settings(dataset, model) if protocol == "official" else PLAIN
    changes: dict = {}
    if chunk_size is not None:
        changes["chunk_size"] = chunk_size or None  # 0: as many names as fit
        changes["per_chunk"] = bool(chunk_size) and base.per_chunk
    caps = parse_max_dets(max_dets)
    if caps:
        changes["max_dets"] = caps
    if rec_rule is not None:
        changes["rec_rule"] = rec_rule
    if overlap is not None:
        changes["overlap"] = overlap
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as e:
        raise fail(str(e)) from None


def describe_settings(dataset: str, settings, protocol: str) -> str:
    """One line saying how this run asks the detector and scores it (printed before a run starts)."""
    parts = []
    if dataset in ("coco", "lvis", "odvg", "odinw"):
        parts.append(f"{settings.chunk_size} class names a prompt" if settings.chunk_size
                     else "as many class names a prompt as fit")
        if settings.per_chunk:
            parts.append("the top --max-detections of each chunk kept and concatenated")
        if dataset != "lvis":
            parts.append(f"maxDets {list(settings.max_dets)}")
    if dataset == "refexp":
        parts.append(f"rec rule {settings.rec_rule}, hit at {settings.overlap.upper()} >= 0.5")
    if dataset == "phrase":
        parts.append("phrases prompted with tokens_positive_eval, R@1/5/10 and R@-1")
    return f"{dataset}, {protocol} protocol: " + ", ".join(parts) + " (docs/protocols.md)"


@eval_app.command()
def run(
    annotations: Path = typer.Argument(..., help="Annotation file of the dataset (for --dataset odinw: the ODinW "
                                       "root folder).", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Registry name, hub id or local directory."),
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"One of: {', '.join(RUN_KINDS)}."),
    images: Path | None = typer.Option(None, "--images", "-i", help="Folder the annotation file names are "
                                       "relative to (not needed for odinw)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, metrics.json; resumable)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per detector call."),
    box_threshold: float = typer.Option(0.0, "--box-threshold", help="Minimum score kept (0 = the protocol)."),
    max_detections: int = typer.Option(300, "--max-detections", min=1, help="Boxes per image (per prompt chunk "
                                       "with LVIS's chunked protocol); 300 = COCO/LVIS."),
    label_map: Path | None = typer.Option(None, "--label-map", help='ODVG label map {"0": "name", ...}.'),
    plot: bool = typer.Option(False, "--plot", help="Also draw OUT/pr_curve.png (detection datasets)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (the published numbers) or bf16 (faster "
                                  "on CPUs with bf16 support)."),
    protocol: str = typer.Option("official", "--protocol", help="official (the settings of the paper's code, "
                                 "docs/protocols.md) or plain (`detect`'s defaults); the options below override."),
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=0, help="Class names per prompt (official "
                                          "LVIS: 40; 0 = as many as fit in the text limit)."),
    max_dets: str | None = typer.Option(None, "--max-dets", help="pycocotools' caps for coco / odvg / odinw "
                                        "(official: 100,300,1000; COCO's own: 1,10,100)."),
    rec_rule: str | None = typer.Option(None, "--rec-rule", help="refexp box scoring: mmgdino (best token), "
                                        "llmdet (first noun phrase, NLTK) or mean (whole expression); default: "
                                        "the model family's."),
    overlap: str | None = typer.Option(None, "--iou", help="refexp hit rule: iou (mmdetection) or giou (MDETR)."),
    manifest: str | None = typer.Option(None, "--manifest", help="odinw: the official list, odinw13 or odinw35."),
    masks: bool = typer.Option(False, "--masks", help="coco: also segment every box and report mask AP (segm) "
                               "beside box AP; the annotations need masks."),
    segmenter: str | None = typer.Option(None, "--segmenter", help="Segmenter for --masks (default: sam-nano for "
                                         "the synthetic world's models, sam-vit-base otherwise)."),
    slices: str | None = typer.Option(None, "--slices", help=SLICE_HELP["slices"]),
    slice_overlap: float = typer.Option(0.2, "--overlap", help=SLICE_HELP["overlap"]),
    full_image: bool = typer.Option(True, "--full-image/--no-full-image", help=SLICE_HELP["full_image"]),
    merge: str = typer.Option("nmm", "--merge", help=SLICE_HELP["merge"]),
) -> None:
    """Run a detector over a dataset, write OUT/results.json and OUT/metrics.json, print the metrics."""
    from groundscope.slicing import SliceError, spec_from_options

    try:
        spec = spec_from_options(slices, slice_overlap, full_image, merge)
    except SliceError as e:
        raise fail(str(e))
    if spec is not None and dataset == "odinw":
        raise fail("--slices runs with eval run's single-dataset kinds (coco, lvis, odvg, refexp, phrase), not odinw")
    if dataset not in RUN_KINDS:
        raise fail(f"--dataset must be one of {', '.join(RUN_KINDS)}, not {dataset!r}")
    if plot and dataset not in DETECTION_KINDS:
        console.print(f"note: --plot draws precision/recall curves of detection datasets; ignored for {dataset}")
    if dataset == "odinw" and manifest not in BUILTIN_MANIFESTS:
        raise fail(f"--dataset odinw needs --manifest {' or '.join(BUILTIN_MANIFESTS)} (the official lists)")
    if dataset != "odinw" and images is None:
        raise fail("--images is needed: the folder the annotation file's image names are relative to")
    if (masks or segmenter) and dataset != "coco":
        raise fail(f"--masks scores masks of coco datasets; {dataset} has none")
    if segmenter and not masks:
        raise fail("--segmenter goes with --masks; add --masks")
    settings = run_settings(dataset, model, protocol, chunk_size, max_dets, rec_rule, overlap)
    console.print(describe_settings(dataset, settings, protocol), highlight=False, soft_wrap=True)
    if dataset == "refexp" and settings.rec_rule == "llmdet":
        from groundscope.rec_subject import RecSubjectError, nltk_tagger

        try:  # before a model loads, not at the first expression
            nltk_tagger()
        except RecSubjectError as e:
            raise fail(str(e)) from None
    from groundscope.images import ImageLoadError

    common = dict(batch_size=batch_size, box_threshold=box_threshold, max_detections=max_detections,
                  progress=progress, model_name=model, console=console, precision=precision)
    with input_errors():
        try:
            if dataset == "odinw":
                from groundscope.evaluate.odinw_run import run_odinw

                metrics = run_odinw(model_loader(model, device, precision), manifest, annotations, out,
                                    settings=settings, **common)
            else:
                metrics = run_evaluation(
                    model_loader(model, device, precision), dataset, annotations, images, out,
                    label_map=label_map, plot=plot and dataset in DETECTION_KINDS, settings=settings, **common,
                    **({"masks": True, "segmenter": segmenter} if masks else {}),
                    **({"slicing": spec} if spec is not None else {}),
                )
        except ImageLoadError as e:
            raise fail(f"{e} (finished images are kept in {out / JOURNAL}; rerun the same command to resume)") from None
        except KeyboardInterrupt:
            raise fail(f"interrupted; finished images are kept in {out / JOURNAL}; rerun to resume", 130) from None
    if dataset == "odinw":
        tables = [odinw_table(metrics)]
    elif dataset == "lvis":
        tables = lvis_tables(metrics)
    elif dataset in DETECTION_KINDS:
        tables = coco_tables(metrics)
    else:
        tables = [metrics_table(f"{dataset}: {annotations.name}", metrics)]
    finish(metrics, None, tables)
    stdout.print(f"results and metrics written to {escape(str(out))}", highlight=False, soft_wrap=True)


@eval_app.command()
def synth(
    test_dir: Path = typer.Argument(..., help="A folder written by `groundscope synth --split test`.", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="Registry name, hub id or local directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per part + summary.json)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per detector call."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (the published numbers) or bf16 (faster "
                                  "on CPUs with bf16 support)."),
) -> None:
    """The synthetic world's benchmark: base AP/AP50, novel AP50, synonym AP50 and referring P@1 in one run."""
    from groundscope.evaluate.synth import evaluate_synth_world
    from groundscope.images import ImageLoadError

    with input_errors():
        try:
            result = evaluate_synth_world(model_loader(model, device, precision), test_dir, out, batch_size=batch_size,
                                          progress=progress, model_name=model, console=console,
                                          precision=precision)
        except ImageLoadError as e:
            raise fail(f"{e} (finished parts are kept in {out}; rerun the same command to resume)") from None
        except KeyboardInterrupt:
            raise fail(f"interrupted; finished images are kept in {out}; rerun to resume", 130) from None
    summary = result["summary"]
    write_json(out / "summary.json", {"model": model, "test_dir": str(test_dir), **summary})
    table = metrics_table(f"synthetic world: {model} on {test_dir}", summary)
    finish(summary, None, [table])
    stdout.print(f"per-part results and summary.json written to {escape(str(out))}", highlight=False,
                 soft_wrap=True)
