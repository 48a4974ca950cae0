"""``groundscope eval dlc``: DLC-Bench (Describe Anything) from qa.json, class names and a predictions file.

The scoring and the judges are in `groundscope.evaluate.dlc`; this is the command line around them. With
``--out REPORT.json`` every judged region's replies are saved to ``REPORT.responses.json`` as they come, and a
rerun with the same judge reuses them (a judge run of ~900 questions can be interrupted and resumed).
"""

from __future__ import annotations

from pathlib import Path

import typer

from groundscope.cli.common import fail, finish, input_errors, stdout


def register(app: typer.Typer) -> None:
    """Add the ``dlc`` command to the ``eval`` sub-app."""
    app.command(name="dlc")(dlc)


def dlc(
    qa: Path = typer.Option(..., "--qa", help="DLC-Bench qa.json (region id -> questions).", show_default=False),
    predictions: Path = typer.Option(..., "--predictions", "-p", help='{"<region id>": "description"} JSON.',
                                     show_default=False),
    annotations: Path | None = typer.Option(None, "--annotations", help="annotations.json (areas for the "
                                            "small-object subset; class names when there is no class_names.json)."),
    class_names: Path | None = typer.Option(None, "--class-names", help="class_names.json (default: the one "
                                            "beside qa.json)."),
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible server, e.g. "
                                         "http://localhost:9000."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="Model name the server serves."),
    judge_api_key: str | None = typer.Option(None, "--judge-api-key", envvar="GROUNDSCOPE_JUDGE_API_KEY",
                                             help="Bearer key for the server (or GROUNDSCOPE_JUDGE_API_KEY)."),
    judge_local: Path | None = typer.Option(None, "--judge-local", help="A local transformers causal LM as judge."),
    judge: str | None = typer.Option(None, "--judge", help="'rules': exact word rules (synthetic-world questions)."),
    device: str = typer.Option("cpu", "--device", help="Device of --judge-local."),
    default_prediction: str | None = typer.Option(None, "--default-prediction",
                                                  help="Stands in for missing or 'Error:' descriptions."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the JSON report here (replies go to "
                                    "OUT.responses.json and are reused on a rerun)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar over regions."),
) -> None:
    """DLC-Bench: a judge LLM answers each region's questions from its description; prints Pos / Neg / Avg."""
    from groundscope.evaluate import dlc as bench
    from groundscope.evaluate.report import metrics_table

    if judge is not None and judge != "rules":
        raise fail(f"--judge takes 'rules' (the other judges are --judge-url / --judge-local), not {judge!r}")
    with input_errors():
        questions = bench.read_qa(qa)
        descriptions = bench.read_predictions(predictions)
        ann = bench.read_annotations(annotations) if annotations is not None else None
        names, names_from = bench.resolve_class_names(qa, class_names, ann)
    try:
        the_judge = bench.make_judge(url=judge_url, model=judge_model, api_key=judge_api_key, local=judge_local,
                                     rules=judge == "rules", device=device)
    except (ValueError, bench.DlcJudgeError) as e:
        raise fail(str(e)) from None
    cache_path = out.with_name(out.stem + ".responses.json") if out is not None else None
    cache = bench.load_cache(cache_path, the_judge.name) if cache_path is not None else {}

    def save(region, score) -> None:
        if cache_path is not None:
            bench.save_cache(cache_path, the_judge.name, cache)

    with input_errors():
        try:
            result = bench.evaluate_dlc(descriptions, questions, the_judge, class_names=names,
                                        areas=ann.areas if ann is not None else None,
                                        default_prediction=default_prediction, cache=cache, on_region=save,
                                        progress=progress, source=str(predictions))
        except bench.DlcJudgeError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            kept = f"; judged regions are kept in {cache_path}, rerun to resume" if cache_path else ""
            raise fail(f"interrupted{kept}", 130) from None
    report = {"benchmark": "DLC-Bench", "judge": the_judge.name, "qa": str(qa), "predictions": str(predictions),
              "class_names": names_from, **result.as_dict()}
    summary = {"Pos": result.pos, "Neg": result.neg, "Avg": result.avg}
    if result.small_objects is not None:
        s = result.small_objects
        summary.update({f"small {k}": v for k, v in (("Pos", s.pos), ("Neg", s.neg), ("Avg", s.avg))})
    title = f"DLC-Bench, judge {the_judge.name}"
    finish(report, out, [metrics_table(title, summary)])
    counts = result.summary
    stdout.print(f"{counts.regions} regions, {counts.positive_questions} positive + {counts.negative_questions} "
                 f"negative questions", highlight=False)
    stdout.print(f"Pos {_num(result.pos)}  Neg {_num(result.neg)}  Avg {_num(result.avg)}", highlight=False)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
