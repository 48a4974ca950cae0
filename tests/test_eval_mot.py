"""`groundscope eval mot` / `evaluate_mot`: parity with motmetrics and TrackEval driven directly, hand-computed
cases, the GT-against-itself case on the synthetic video world, input errors, the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

mm = pytest.importorskip("motmetrics", reason="the track extra: pip install 'groundscope[track]'")

from groundscope.evaluate import EvaluationInputError  # noqa: E402
from groundscope.evaluate.mot import evaluate_mot  # noqa: E402

runner = CliRunner()
COUNT_KEYS = {"IDSW": "num_switches", "FP": "num_false_positives", "FN": "num_misses", "Frag": "num_fragmentations",
              "MT": "mostly_tracked", "PT": "partially_tracked", "ML": "mostly_lost", "GT_dets": "num_objects",
              "pred_dets": "num_predictions", "GT_tracks": "num_unique_objects"}
RATE_KEYS = {"MOTA": "mota", "IDF1": "idf1", "IDP": "idp", "IDR": "idr", "recall": "recall", "precision": "precision"}


# ----------------------------------------------------------------------------------------------- random data


def random_gt(rng: np.random.Generator, tracks: int, frames: int) -> list[list[float]]:
    """MOT17-style rows (frame, id, x, y, w, h, consider, class, visibility): random walks, ~5 % ignored rows."""
    rows = []
    for tid in range(1, tracks + 1):
        start = int(rng.integers(1, frames - 4))
        stop = int(rng.integers(start + 4, frames + 1))
        x, y = rng.uniform(0, 260), rng.uniform(0, 160)
        w, h = rng.uniform(20, 60), rng.uniform(20, 60)
        for f in range(start, stop + 1):
            x, y = x + rng.normal(0, 4), y + rng.normal(0, 4)
            rows.append([f, tid, round(x, 2), round(y, 2), round(w, 2), round(h, 2), int(rng.random() > 0.05),
                         int(rng.integers(1, 4)), round(float(rng.uniform(0.2, 1)), 3)])
    return rows


def perturb(rng: np.random.Generator, gt: list[list[float]], frames: int) -> list[list[float]]:
    """A tracker's output for `gt`: boxes dropped, jittered, two tracks swapping ids, one track re-identified,
    false positives (some on ignored GT boxes), lines shuffled."""
    ids = sorted({int(r[1]) for r in gt})
    a, b = rng.choice(ids, 2, replace=False)
    swap_at, fresh_id, fresh_at = int(rng.integers(1, frames)), int(rng.choice(ids)), int(rng.integers(1, frames))
    out = []
    for f, tid, x, y, w, h, *_ in gt:
        if rng.random() < 0.1:
            continue
        hid = tid + 100
        if f >= swap_at and tid in (a, b):
            hid = (b if tid == a else a) + 100
        if tid == fresh_id and f >= fresh_at:
            hid = 500
        j = rng.normal(0, 5.0, 4)  # enough for many pairs to fall either side of IoU 0.5
        out.append([f, hid, round(x + j[0], 3), round(y + j[1], 3), round(max(w + j[2], 1), 3),
                    round(max(h + j[3], 1), 3), round(float(rng.uniform(0.3, 1)), 4), -1, -1, -1])
    for k in range(len(gt) // 20):
        box = np.round(rng.uniform([0, 0, 20, 20], [260, 160, 60, 60]), 2)
        out.append([int(rng.integers(1, frames + 1)), 900 + k, *box, 0.2, -1, -1, -1])
    rng.shuffle(out)
    return out


def write_rows(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def random_benchmark(tmp_path_factory):
    """Three sequences in MOTChallenge layout: GT/<seq>/gt/gt.txt + seqinfo.ini, TRACKERS/t/data/<seq>.txt."""
    root = tmp_path_factory.mktemp("mot")
    rng = np.random.default_rng(38)
    seqs = {}
    for k, (tracks, frames) in enumerate([(6, 30), (8, 25), (5, 20)]):
        name = f"seq-{k + 1}"
        gt = random_gt(rng, tracks, frames)
        write_rows(root / "gt" / name / "gt" / "gt.txt", gt)
        (root / "gt" / name / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nseqLength={frames}\n")
        write_rows(root / "trackers" / "t" / "data" / f"{name}.txt", perturb(rng, gt, frames))
        seqs[name] = frames
    return root, seqs


# ----------------------------------------------------------------------------------------------- parity


@pytest.fixture
def numpy2_motmetrics(monkeypatch):
    """motmetrics 1.4.0's iou_matrix calls np.asfarray (removed in NumPy 2): give it back for the direct runs."""
    if not hasattr(np, "asfarray"):
        monkeypatch.setattr(np, "asfarray", lambda a, dtype=float: np.asarray(a, dtype=dtype), raising=False)


def test_parity_with_motmetrics(random_benchmark, numpy2_motmetrics):
    root, seqs = random_benchmark
    ours = evaluate_mot(root / "gt", root / "trackers" / "t")
    accs = []
    for name in seqs:  # motmetrics as its MOTChallenge app drives it
        gt = mm.io.loadtxt(str(root / "gt" / name / "gt" / "gt.txt"), fmt="mot15-2D", min_confidence=1)
        ts = mm.io.loadtxt(str(root / "trackers" / "t" / "data" / f"{name}.txt"), fmt="mot15-2D")
        accs.append(mm.utils.compare_to_groundtruth(gt, ts, "iou", distth=0.5))
    summary = mm.metrics.create().compute_many(accs, metrics=[*RATE_KEYS.values(), *COUNT_KEYS.values(), "motp"],
                                               names=list(seqs), generate_overall=True)
    assert ours["IDSW"] > 0 and ours["FP"] > 0 and ours["FN"] > 0 and 0.2 < ours["MOTA"] < 0.95
    for label, values in [("OVERALL", ours), *((n, ours["per_sequence"][n]) for n in seqs)]:
        for key, name in {**RATE_KEYS, **COUNT_KEYS}.items():
            assert values[key] == pytest.approx(float(summary.loc[label, name]), abs=1e-9), (label, key)
        assert values["MOTP"] == pytest.approx(1 - float(summary.loc[label, "motp"]), abs=1e-9), label
    assert ours["pred_tracks"] == sum(len({r[1] for r in _rows(root / "trackers" / "t" / "data" / f"{n}.txt")})
                                      for n in seqs)


def _rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in path.read_text().splitlines() if line]


def test_parity_with_trackeval(random_benchmark):
    trackeval = pytest.importorskip("trackeval")
    root, seqs = random_benchmark
    ours = evaluate_mot(root / "gt", root / "trackers" / "t")
    # TrackEval's own MOTChallenge reader and evaluator. MOT15 mode: no pedestrian-only preprocessing, which
    # is the class-agnostic evaluation evaluate_mot does (its module doc).
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"), "TRACKERS_TO_EVAL": ["t"],
        "BENCHMARK": "MOT15", "SKIP_SPLIT_FOL": True, "SEQ_INFO": dict(seqs), "PRINT_CONFIG": False,
        "OUTPUT_FOLDER": str(root / "trackeval_out")})
    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False,
                                     "PLOT_CURVES": False, "LOG_ON_ERROR": None})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
    res, _ = evaluator.evaluate([dataset], metrics)
    res = res["MotChallenge2DBox"]["t"]
    for label, values in [("COMBINED_SEQ", ours), *((n, ours["per_sequence"][n]) for n in seqs)]:
        te = res[label]["pedestrian"]
        for key in ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr"):
            assert values[key] == pytest.approx(float(np.mean(te["HOTA"][key])), abs=1e-9), (label, key)
        # The two libraries agree on CLEAR MOT and the identity metrics too (same data, different code).
        assert values["MOTA"] == pytest.approx(te["CLEAR"]["MOTA"], abs=1e-9), label
        assert values["IDSW"] == te["CLEAR"]["IDSW"] and values["FP"] == te["CLEAR"]["CLR_FP"]
        assert values["MOTP"] == pytest.approx(te["CLEAR"]["MOTP"], abs=1e-9), label
        assert values["IDF1"] == pytest.approx(te["Identity"]["IDF1"], abs=1e-9), label


def test_overall_motp_with_an_unmatched_sequence(tmp_path):
    """motmetrics' compute_many overall MOTP is NaN when one sequence has no match; ours stays the mean IoU."""
    write_rows(tmp_path / "gt" / "a" / "gt" / "gt.txt", [[1, 1, 10, 10, 20, 20, 1, 1, 1]])
    write_rows(tmp_path / "gt" / "b" / "gt" / "gt.txt", [[1, 1, 10, 10, 20, 20, 1, 1, 1]])
    write_rows(tmp_path / "res" / "a.txt", [[1, 7, 10, 10, 20, 16, 1, -1, -1, -1]])  # IoU 0.8
    write_rows(tmp_path / "res" / "b.txt", [[1, 7, 100, 100, 20, 20, 1, -1, -1, -1]])  # no overlap
    m = evaluate_mot(tmp_path / "gt", tmp_path / "res")
    assert m["per_sequence"]["a"]["MOTP"] == pytest.approx(0.8) and m["per_sequence"]["b"]["MOTP"] is None
    assert m["MOTP"] == pytest.approx(0.8) and m["MOTA"] == pytest.approx(0.0)  # 1 - (1 FN + 1 FP) / 2


# ----------------------------------------------------------------------------------------------- hand-computed


def _two_frames(tmp_path: Path, hyp_ids: list[tuple[int, int]]) -> dict:
    """Objects 1 (left) and 2 (right) in frames 1-2, tracked perfectly in space, with the given ids per frame."""
    gt = [[f, o, 10 + 100 * (o - 1), 10, 40, 40, 1, 1, 1] for f in (1, 2) for o in (1, 2)]
    res = [[f, hyp_ids[f - 1][o - 1], 10 + 100 * (o - 1), 10, 40, 40, 1, -1, -1, -1] for f in (1, 2) for o in (1, 2)]
    return evaluate_mot(write_rows(tmp_path / "gt.txt", gt), write_rows(tmp_path / "res.txt", res))


def test_one_id_switch_by_hand(tmp_path):
    # Frame 2 gives object 2 a new id (3 instead of 2): 1 switch, no FP/FN over 4 GT boxes.
    m = _two_frames(tmp_path, [(1, 2), (1, 3)])
    assert (m["IDSW"], m["FP"], m["FN"]) == (1, 0, 0)
    assert m["MOTA"] == pytest.approx(1 - 1 / 4)
    # Best one-to-one id mapping 1-1 (2 boxes), 2-2 (1 box): IDTP 3, IDFP 1 (id 3), IDFN 1 -> 6 / 8.
    assert m["IDF1"] == pytest.approx(0.75)
    # HOTA (boxes exact, so DetA = 1 at every alpha): per TP A = TPA / (TPA + FNA + FPA) = 1, 1, 1/2, 1/2.
    assert m["DetA"] == pytest.approx(1.0) and m["AssA"] == pytest.approx(0.75)
    assert m["HOTA"] == pytest.approx(math.sqrt(0.75)) and m["LocA"] == pytest.approx(1.0)


def test_swapped_ids_by_hand(tmp_path):
    # Frame 2 swaps the two ids: 2 switches; MOTA 1 - 2/4; IDF1: mapping keeps 1 box per id -> 4 / 8.
    m = _two_frames(tmp_path, [(1, 2), (2, 1)])
    assert m["IDSW"] == 2 and m["MOTA"] == pytest.approx(0.5) and m["IDF1"] == pytest.approx(0.5)
    # Every TP: TPA 1, FNA 1, FPA 1 -> AssA 1/3.
    assert m["AssA"] == pytest.approx(1 / 3) and m["HOTA"] == pytest.approx(math.sqrt(1 / 3))


def test_iou_threshold_and_ignored_gt(tmp_path):
    gt = write_rows(tmp_path / "gt.txt", [[1, 1, 0, 0, 100, 100, 1, 1, 1], [1, 2, 300, 0, 50, 50, 0, 1, 1],
                                          [2, 1, 0, 0, 100, 100, 1, 1, 1]])
    # Frame 1: IoU 0.6 with object 1 (100x60 inside 100x100), and a box on the ignored (consider = 0) object 2.
    # Frame 2: IoU exactly 0.5 (100x50), which matches: the rule is IoU >= threshold.
    res = write_rows(tmp_path / "res.txt", [[1, 5, 0, 0, 100, 60, 1, -1, -1, -1], [1, 6, 300, 0, 50, 50, 1, -1, -1, -1],
                                            [2, 5, 0, 0, 100, 50, 1, -1, -1, -1]])
    m = evaluate_mot(gt, res, iou_threshold=0.5)
    assert (m["GT_dets"], m["FN"], m["FP"]) == (2, 0, 1)  # the ignored object is no target: its box is an FP
    assert m["MOTP"] == pytest.approx(0.55)
    mid = evaluate_mot(gt, res, iou_threshold=0.55)
    assert (mid["FN"], mid["FP"]) == (1, 2) and mid["MOTP"] == pytest.approx(0.6)
    strict = evaluate_mot(gt, res, iou_threshold=0.7)
    assert (strict["FN"], strict["FP"]) == (2, 3) and strict["MOTA"] == pytest.approx(1 - 5 / 2)
    assert strict["HOTA"] == pytest.approx(m["HOTA"])  # HOTA takes no threshold


# ----------------------------------------------------------------------------------------------- synthetic world


def test_synthetic_gt_against_itself(tmp_path):
    from groundscope.data.synth_video import generate_video_world

    world = tmp_path / "world"
    generate_video_world(world, 2, 8, seed=3, size=(192, 144), video=False)
    results = tmp_path / "results"
    results.mkdir()
    for seq in ("synth-0001", "synth-0002"):
        (results / f"{seq}.txt").write_bytes((world / seq / "gt" / "gt.txt").read_bytes())
    m = evaluate_mot(world, results)
    assert m["sequences"] == ["synth-0001", "synth-0002"]
    for key in ("MOTA", "IDF1", "HOTA", "DetA", "AssA", "MOTP", "recall", "precision"):
        assert m[key] == pytest.approx(1.0, abs=1e-12), key
    assert m["IDSW"] == m["FP"] == m["FN"] == 0 and m["GT_tracks"] == m["pred_tracks"] > 0
    ann = json.loads((world / "annotations.json").read_text())
    assert m["GT_dets"] == len(ann["annotations"]) and m["GT_tracks"] == len(ann["tracks"])


def test_without_trackeval(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackeval", None)  # makes `import trackeval` fail
    gt = write_rows(tmp_path / "gt.txt", [[1, 1, 0, 0, 10, 10, 1, 1, 1]])
    m = evaluate_mot(gt, gt)
    assert m["MOTA"] == 1.0 and m["HOTA"] is None and "trackeval" in m["HOTA_unavailable"]
    assert "trackeval" not in m["libraries"]


# ----------------------------------------------------------------------------------------------- errors, CLI


@pytest.mark.parametrize("line, message", [
    ("1,1,10,10,abc,20,1,1,1", "not all columns are numbers"),
    ("1,1,10,10,20", "5 columns"),
    ("0,1,10,10,20,20,1,1,1", "frame (1-based) must be an integer >= 1"),
    ("1.5,1,10,10,20,20,1,1,1", "frame (1-based) must be an integer"),
    ("1,-1,10,10,20,20,1,1,1", "a detection without one"),
    ("1,1,10,10,-2,20,1,1,1", "width and height must be >= 0"),
    ("1,1,10,10,20,20,0.5,1,1", "consider flag, 0 or 1"),
    ("1,1,10,10,20,20,1,1,1", "id 1 appears twice in frame 1 (first on line 1)"),
    ("9,1,10,10,20,20,1,1,1", "past the sequence's seqLength 5"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    seq = tmp_path / "gt" / "s"
    write_rows(seq / "gt" / "gt.txt", [[1, 1, 0, 0, 5, 5, 1, 1, 1]])
    (seq / "gt" / "gt.txt").write_text("1,1,0,0,5,5,1,1,1\n\n" + line + "\n")
    (seq / "seqinfo.ini").write_text("[Sequence]\nseqLength=5\n")
    write_rows(tmp_path / "res" / "s.txt", [])
    with pytest.raises(EvaluationInputError) as e:
        evaluate_mot(tmp_path / "gt", tmp_path / "res")
    assert f"{seq / 'gt' / 'gt.txt'}:3: " in str(e.value) and message in str(e.value)


def test_missing_inputs(tmp_path):
    write_rows(tmp_path / "gt" / "s1" / "gt" / "gt.txt", [[1, 1, 0, 0, 5, 5, 1, 1, 1]])
    write_rows(tmp_path / "gt" / "s2" / "gt" / "gt.txt", [[1, 1, 0, 0, 5, 5, 1, 1, 1]])
    write_rows(tmp_path / "res" / "s1.txt", [[1, 1, 0, 0, 5, 5, 1, -1, -1, -1]])
    with pytest.raises(EvaluationInputError, match=r"res/s2\.txt: file not found: the ground truth has sequence"):
        evaluate_mot(tmp_path / "gt", tmp_path / "res")
    with pytest.raises(EvaluationInputError, match="one results file for 2 sequences"):
        evaluate_mot(tmp_path / "gt", tmp_path / "res" / "s1.txt")
    with pytest.raises(EvaluationInputError, match=r"nope\.txt: not found"):
        evaluate_mot(tmp_path / "nope.txt", tmp_path / "res")
    with pytest.raises(EvaluationInputError, match="no sequences"):
        evaluate_mot(tmp_path / "res", tmp_path / "res")
    (tmp_path / "gt" / "s1" / "seqinfo.ini").write_text("[Sequence]\nseqLength=many\n")
    with pytest.raises(EvaluationInputError, match=r"seqinfo\.ini: no integer \[Sequence\] seqLength"):
        evaluate_mot(tmp_path / "gt" / "s1", tmp_path / "res")
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_mot(tmp_path / "gt" / "s1" / "gt" / "gt.txt", tmp_path / "res" / "s1.txt", iou_threshold=0)


def test_cli(tmp_path):
    from groundscope.cli import app

    gt = write_rows(tmp_path / "MOT-01" / "gt" / "gt.txt",
                    [[f, o, 10 + 100 * o, 10, 40, 40, 1, 1, 1] for f in (1, 2) for o in (1, 2)])
    res = write_rows(tmp_path / "res" / "MOT-01.txt",
                     [[f, o, 10 + 100 * o, 10, 40, 40, 1, -1, -1, -1] for f in (1, 2) for o in (1, 2)])
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["eval", "mot", str(gt), str(res.parent), "--per-sequence", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "MOTA" in result.output and "HOTA" in result.output and "MOT-01" in result.output
    saved = json.loads(out.read_text())
    assert saved["MOTA"] == saved["IDF1"] == 1.0 and saved["sequences"] == ["MOT-01"]
    res.write_text("1,1,10,10\n")
    bad = runner.invoke(app, ["eval", "mot", str(gt), str(res)])
    assert bad.exit_code == 2 and "MOT-01.txt:1:" in bad.output and "4 columns" in bad.output
