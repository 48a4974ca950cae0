"""Multi-object tracking metrics of MOTChallenge files: MOTA, IDF1, HOTA and their parts, from the libraries.

`evaluate_mot` reads ground truth and tracker output in the MOTChallenge text format, checks every line, and
hands the boxes to the tools made for these metrics; no metric is computed here:

* **motmetrics** (py-motmetrics, Heindl & Valmadre): CLEAR MOT (MOTA, MOTP, ID switches, FP, FN,
  fragmentations, mostly tracked / partially tracked / mostly lost) and the identity metrics (IDF1, IDP, IDR),
  per sequence, and over all sequences on one accumulator holding them all (equal to ``compute_many(...,
  generate_overall=True)``, except that this keeps MOTP defined when one sequence has no match).
* **TrackEval** (Luiten et al., the MOTChallenge's official evaluation code; PyPI ``trackeval``): HOTA with
  DetA, AssA, LocA, DetRe, DetPr, AssRe, AssPr, each the mean over TrackEval's 19 localisation thresholds
  0.05..0.95 (as its summary reports them), combined over sequences by ``HOTA.combine_sequences``. HOTA takes
  no IoU threshold: it integrates over them. Without trackeval the HOTA keys are None and ``HOTA_unavailable``
  says why.

Both get the boxes the way their own MOTChallenge readers would give them, so the numbers equal those of
motmetrics' ``compare_to_groundtruth`` on ``io.loadtxt(gt, min_confidence=1)`` and of TrackEval's
``MotChallenge2DBox`` without the pedestrian-only preprocessing (the tests drive both libraries directly and
compare to 1e-9). Three things are done here rather than by the libraries: the reading (so that a bad line is
reported by file and line); the IoU distance matrix for motmetrics, which is motmetrics' ``distances.iou_matrix``
written out on its own ``distances.boxiou``, because motmetrics 1.4.0 (the newest on PyPI) calls ``np.asfarray``,
removed in NumPy 2; and the all-sequences accumulator, filled directly because motmetrics'
``merge_event_dataframes`` calls ``DataFrame.append``, removed in pandas 2.

File format (MOT16 paper, Milan et al., arXiv:1603.00831, Table 3; MOTChallenge devkit): one box per line,
comma-separated (spaces and tabs are accepted too, as motmetrics' reader does)::

    ground truth:   frame, id, bb_left, bb_top, bb_width, bb_height, consider, class, visibility
    tracker output: frame, id, bb_left, bb_top, bb_width, bb_height, conf, x, y, z

``frame`` is 1-based, ``id`` a non-negative integer, unique within a frame; boxes in pixels. A ground-truth row
whose ``consider`` flag is 0 is ignored (not a target), as the devkit, motmetrics (``min_confidence=1``) and
TrackEval (``zero_marked``) do; the flag must be 0 or 1. Tracker output needs the first six columns; its
``conf`` is not used by these metrics. Evaluation is class-agnostic: every considered ground-truth box is a
target whatever its class column says. (MOT17/MOT20's official numbers also drop tracker boxes that match a
distractor-class box, e.g. static person or reflection; that preprocessing is not done here, so real MOT17
files score a little lower than on the leaderboard.)

Layouts: GT and RESULTS are either two files (one sequence), or folders as MOTChallenge lays them out:
``GT/<seq>/gt/gt.txt`` (a folder with ``gt/gt.txt`` in it is one sequence) and ``RESULTS/<seq>.txt`` (or
TrackEval's ``RESULTS/data/<seq>.txt``). Every GT sequence needs a results file (an empty one if the tracker
found nothing); results files of other sequences are ignored. A ``seqinfo.ini`` beside ``gt/`` gives the
sequence length; frames past it are an error, as in TrackEval.
"""

from __future__ import annotations

import configparser
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from groundscope.evaluate.validate import EvaluationInputError

_SPLIT = re.compile(r"\s*,\s*|\s+")  # motmetrics' reader accepts commas, spaces and tabs
GT_COLUMNS = (7, 10)  # frame, id, box (4), consider [, class, visibility [, unused]]
RESULT_COLUMNS = (6, 10)  # frame, id, box (4) [, conf, x, y, z]

# Our key -> motmetrics metric name. MOTP is reported as MOTChallenge does (mean IoU of matched pairs, higher
# is better): motmetrics' own ``motp`` is the mean distance 1 - IoU, so MOTP = 1 - motp.
MOTMETRICS = {
    "MOTA": "mota", "IDF1": "idf1", "IDP": "idp", "IDR": "idr", "recall": "recall", "precision": "precision",
    "IDSW": "num_switches", "FP": "num_false_positives", "FN": "num_misses", "Frag": "num_fragmentations",
    "MT": "mostly_tracked", "PT": "partially_tracked", "ML": "mostly_lost", "GT_dets": "num_objects",
    "pred_dets": "num_predictions", "GT_tracks": "num_unique_objects",
}
COUNTS = {"IDSW", "FP", "FN", "Frag", "MT", "PT", "ML", "GT_dets", "pred_dets", "GT_tracks", "pred_tracks"}
HOTA_KEYS = ("HOTA", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr")
SUMMARY_KEYS = ("HOTA", "MOTA", "IDF1", "DetA", "AssA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "MOTP", "IDP",
                "IDR", "recall", "precision", "IDSW", "FP", "FN", "Frag", "MT", "PT", "ML", "GT_dets", "pred_dets",
                "GT_tracks", "pred_tracks")
MEANING = {
    "HOTA": "higher order tracking accuracy, sqrt(DetA x AssA), mean over IoU 0.05..0.95",
    "MOTA": "1 - (FN + FP + IDSW) / GT_dets",
    "IDF1": "F1 of boxes matched under the best one-to-one track mapping",
    "DetA": "detection accuracy (HOTA's detection part)",
    "AssA": "association accuracy (HOTA's association part)",
    "LocA": "mean IoU of HOTA's matches",
    "DetRe": "detection recall (HOTA)", "DetPr": "detection precision (HOTA)",
    "AssRe": "association recall (HOTA)", "AssPr": "association precision (HOTA)",
    "MOTP": "mean IoU of matched boxes (CLEAR MOT)",
    "IDP": "identity precision", "IDR": "identity recall",
    "recall": "matched / GT boxes", "precision": "matched / predicted boxes",
    "IDSW": "identity switches", "FP": "false positive boxes", "FN": "missed GT boxes",
    "Frag": "track fragmentations", "MT": "GT tracks matched >= 80 % of their life",
    "PT": "GT tracks matched 20-80 %", "ML": "GT tracks matched < 20 %",
    "GT_dets": "GT boxes (considered)", "pred_dets": "predicted boxes",
    "GT_tracks": "GT track ids", "pred_tracks": "predicted track ids",
}


@dataclass
class MotBoxes:
    """The rows of one MOTChallenge file, in file order.

    Attributes:
        path: the file.
        frames: int64 (N,) 1-based frame numbers.
        ids: int64 (N,) track ids.
        boxes: float64 (N, 4) ``bb_left, bb_top, bb_width, bb_height`` as written (1-based pixels).
        lines: int64 (N,) 1-based line numbers (for messages).
    """

    path: Path
    frames: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    lines: np.ndarray

    def at(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), boxes (n, 4)) of ``frame``, in file order."""
        keep = self.frames == frame
        return self.ids[keep], self.boxes[keep]


@dataclass
class MotSequence:
    """One sequence to score: its name, ground-truth and results files, and ``seqLength`` when known."""

    name: str
    gt: Path
    results: Path
    length: int | None = None


# ----------------------------------------------------------------------------------------------- reading


def _integer(value: float, what: str, where: str, minimum: int) -> int:
    if not value.is_integer() or value < minimum:
        raise EvaluationInputError(where, f"{what} must be an integer >= {minimum}, got {value:g}")
    return int(value)


def read_mot(path: str | Path, kind: str = "results", length: int | None = None) -> MotBoxes:
    """Read and check a MOTChallenge file (module doc: the format); ``kind`` is ``"gt"`` or ``"results"``.

    Ground-truth rows whose ``consider`` flag is 0 are dropped. ``length`` (seqLength) bounds the frame numbers.
    Raises `EvaluationInputError` naming ``file:line`` for a bad line, or the file when it cannot be read.
    """
    path = Path(path)
    lo, hi = GT_COLUMNS if kind == "gt" else RESULT_COLUMNS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationInputError(str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvaluationInputError(str(path), f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    frames, ids, boxes, lines = [], [], [], []
    first_line: dict[tuple[int, int], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path}:{number}"
        fields = _SPLIT.split(line)
        if not lo <= len(fields) <= hi:
            layout = ("frame,id,bb_left,bb_top,bb_width,bb_height,consider,class,visibility" if kind == "gt"
                      else "frame,id,bb_left,bb_top,bb_width,bb_height[,conf,x,y,z]")
            raise EvaluationInputError(where, f"{len(fields)} columns, a MOTChallenge {kind} line has {lo}-{hi} "
                                       f"({layout}): {line[:80]!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise EvaluationInputError(where, f"not all columns are numbers: {line[:80]!r}") from None
        if not all(math.isfinite(v) for v in values[:7]):
            raise EvaluationInputError(where, f"frame, id, box and flag must be finite numbers: {line[:80]!r}")
        frame = _integer(values[0], "frame (1-based)", where, 1)
        track = _integer(values[1], "id (a track id; -1 is a detection without one)", where, 0)
        if values[4] < 0 or values[5] < 0:
            raise EvaluationInputError(where, f"box width and height must be >= 0, got {values[4]:g} x {values[5]:g}")
        if length is not None and frame > length:
            raise EvaluationInputError(where, f"frame {frame} is past the sequence's seqLength {length} "
                                       "(seqinfo.ini)")
        if kind == "gt":
            if values[6] not in (0.0, 1.0):
                raise EvaluationInputError(where, f"column 7 of ground truth is the consider flag, 0 or 1 "
                                           f"(MOT16 format), got {values[6]:g}")
            if values[6] == 0.0:  # "ignored" box: not a target (MOT16 paper, Table 3)
                continue
        if (frame, track) in first_line:
            raise EvaluationInputError(where, f"id {track} appears twice in frame {frame} (first on line "
                                       f"{first_line[frame, track]}); an id is one box per frame")
        first_line[frame, track] = number
        frames.append(frame)
        ids.append(track)
        boxes.append(values[2:6])
        lines.append(number)
    return MotBoxes(path=path, frames=np.asarray(frames, np.int64), ids=np.asarray(ids, np.int64),
                    boxes=np.asarray(boxes, np.float64).reshape(-1, 4), lines=np.asarray(lines, np.int64))


def _seq_length(seq_dir: Path) -> int | None:
    """seqLength from ``seq_dir/seqinfo.ini`` (None without the file)."""
    ini = seq_dir / "seqinfo.ini"
    if not ini.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(ini, encoding="utf-8")
        return int(parser["Sequence"]["seqLength"])
    except (configparser.Error, KeyError, ValueError) as e:
        raise EvaluationInputError(str(ini), f"no integer [Sequence] seqLength ({type(e).__name__}: {e}); "
                                   "fix the file or remove it") from None


def _results_file(results: Path, name: str) -> Path:
    for candidate in (results / f"{name}.txt", results / "data" / f"{name}.txt"):
        if candidate.is_file():
            return candidate
    raise EvaluationInputError(str(results / f"{name}.txt"), f"file not found: the ground truth has sequence "
                               f"{name!r}; a tracker writes one <seq>.txt per sequence (empty if it found nothing)")


def find_sequences(gt: str | Path, results: str | Path) -> list[MotSequence]:
    """The sequences to score: pairs of files, or the MOTChallenge folder layouts (module doc)."""
    gt, results = Path(gt), Path(results)
    if not gt.exists():
        raise EvaluationInputError(str(gt), "not found (give a gt.txt file, a sequence folder with gt/gt.txt, "
                                   "or a folder of sequences)")
    if not results.exists():
        raise EvaluationInputError(str(results), "not found (give a results .txt file or a folder of <seq>.txt)")
    if gt.is_file():
        seq_dir = gt.parent.parent if gt.parent.name == "gt" else None
        name = seq_dir.name if seq_dir is not None else gt.stem
        if results.is_dir():
            return [MotSequence(name, gt, _results_file(results, name), _seq_length(seq_dir) if seq_dir else None)]
        return [MotSequence(name, gt, results, _seq_length(seq_dir) if seq_dir else None)]
    if (gt / "gt" / "gt.txt").is_file():  # one sequence folder
        seq_dirs = [gt]
    else:
        seq_dirs = sorted(d for d in gt.iterdir() if (d / "gt" / "gt.txt").is_file())
    if not seq_dirs:
        raise EvaluationInputError(str(gt), "no sequences: expected <seq>/gt/gt.txt inside (MOTChallenge layout)")
    if results.is_file():
        if len(seq_dirs) > 1:
            raise EvaluationInputError(str(results), f"one results file for {len(seq_dirs)} sequences; give a "
                                       "folder with one <seq>.txt per sequence")
        return [MotSequence(seq_dirs[0].name, seq_dirs[0] / "gt" / "gt.txt", results, _seq_length(seq_dirs[0]))]
    return [MotSequence(d.name, d / "gt" / "gt.txt", _results_file(results, d.name), _seq_length(d))
            for d in seq_dirs]


# ----------------------------------------------------------------------------------------------- the libraries


def _motmetrics():
    try:
        import motmetrics
    except ImportError as e:
        raise ImportError("tracking metrics need motmetrics: pip install 'groundscope[track]' "
                          "(or pip install motmetrics trackeval)") from e
    return motmetrics


def _frames(gt: MotBoxes, res: MotBoxes) -> np.ndarray:
    """Sorted frame numbers with a considered GT box or a predicted box (the frames both libraries visit)."""
    return np.union1d(gt.frames, res.frames)


def iou_distances(gt_boxes: np.ndarray, res_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """motmetrics' ``distances.iou_matrix(gt, res, max_iou=1 - iou_threshold)``: (n, m) distances 1 - IoU,
    NaN (do not pair) where IoU < threshold. Written out on motmetrics' ``boxiou`` because ``iou_matrix`` calls
    ``np.asfarray``, removed in NumPy 2."""
    import motmetrics as mm

    if gt_boxes.size == 0 or res_boxes.size == 0:
        return np.empty((0, 0))
    dist = 1 - mm.distances.boxiou(gt_boxes[:, None], res_boxes[None, :])
    return np.where(dist > 1 - iou_threshold, np.nan, dist)


def accumulate(gt: MotBoxes, res: MotBoxes, iou_threshold: float, acc=None, frame_offset: int = 0,
               gt_offset: int = 0, res_offset: int = 0):
    """A motmetrics ``MOTAccumulator`` fed frame by frame, as ``utils.compare_to_groundtruth`` feeds it.

    With ``acc`` the sequence is appended to that accumulator, its frames and ids shifted by the offsets so
    they cannot meet another sequence's (how `evaluate_mot` builds the all-sequences accumulator).
    """
    mm = _motmetrics()
    acc = mm.MOTAccumulator(auto_id=False) if acc is None else acc
    for frame in _frames(gt, res):
        g_ids, g_boxes = gt.at(frame)
        r_ids, r_boxes = res.at(frame)
        acc.update(g_ids + gt_offset, r_ids + res_offset, iou_distances(g_boxes, r_boxes, iou_threshold),
                   frameid=int(frame) + frame_offset)
    return acc


def trackeval_data(gt: MotBoxes, res: MotBoxes) -> dict:
    """The per-sequence dict TrackEval's metrics take, built as ``MotChallenge2DBox.get_preprocessed_seq_data``
    builds it: ids relabelled 0..n-1 in sorted order, per-timestep IoU from TrackEval's ``_calculate_box_ious``.

    Keys: num_gt_ids, num_tracker_ids, num_gt_dets, num_tracker_dets, num_timesteps, gt_ids / tracker_ids (per
    timestep int (n,)), similarity_scores (per timestep float (n_gt, n_tracker)).
    """
    from trackeval.datasets._base_dataset import _BaseDataset

    gt_unique, res_unique = np.unique(gt.ids), np.unique(res.ids)
    data: dict = {"gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    for frame in _frames(gt, res):
        g_ids, g_boxes = gt.at(frame)
        r_ids, r_boxes = res.at(frame)
        data["gt_ids"].append(np.searchsorted(gt_unique, g_ids))
        data["tracker_ids"].append(np.searchsorted(res_unique, r_ids))
        data["similarity_scores"].append(_BaseDataset._calculate_box_ious(g_boxes, r_boxes, box_format="xywh"))
    data.update(num_gt_ids=len(gt_unique), num_tracker_ids=len(res_unique), num_gt_dets=len(gt.ids),
                num_tracker_dets=len(res.ids), num_timesteps=len(data["gt_ids"]))
    return data


def _hota(pairs: dict[str, tuple[MotBoxes, MotBoxes]]) -> tuple[dict[str, dict], dict, str | None]:
    """TrackEval's HOTA per sequence and combined: ({seq: {key: value}}, {key: value}, None), or Nones and why."""
    try:
        import trackeval
    except ImportError as e:
        return {}, {}, f"trackeval is not importable ({e}); pip install 'groundscope[track]'"
    metric = trackeval.metrics.HOTA()
    per_seq = {name: metric.eval_sequence(trackeval_data(gt, res)) for name, (gt, res) in pairs.items()}
    combined = metric.combine_sequences(per_seq)

    def summary(r: dict) -> dict:  # TrackEval's summary: the mean over its localisation thresholds
        return {k: float(np.mean(r[k])) for k in HOTA_KEYS}

    return {name: summary(r) for name, r in per_seq.items()}, summary(combined), None


def _clean(value) -> float | int | None:
    """JSON-safe scalar: counts as int, NaN/inf (e.g. MOTA without GT boxes) as None."""
    value = float(value)
    return value if math.isfinite(value) else None


def evaluate_mot(gt: str | Path, results: str | Path, iou_threshold: float = 0.5) -> dict:
    """Score tracker output against MOTChallenge ground truth (formats and rules in the module doc).

    Args:
        gt: a gt.txt, a sequence folder (``gt/gt.txt``) or a folder of sequences.
        results: a results .txt, or a folder with ``<seq>.txt`` per sequence.
        iou_threshold: IoU a box pair needs to match, for CLEAR MOT and identity metrics (0 < t <= 1; 0.5 is
            MOTChallenge's). HOTA integrates over thresholds and does not use it.

    Returns:
        ``{key: value}`` for every key of `SUMMARY_KEYS` over all sequences (HOTA keys None without trackeval,
        then ``HOTA_unavailable`` says why), plus ``per_sequence: {seq: {key: value}}``, ``sequences`` (names),
        ``files: {seq: {"gt", "results"}}``, ``iou_threshold`` and ``libraries`` (versions used).

    Raises:
        EvaluationInputError: a missing file or folder, or a bad line (named by file and line).
        ImportError: motmetrics is not installed.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    mm = _motmetrics()
    import pandas as pd  # a motmetrics dependency

    sequences = find_sequences(gt, results)
    pairs = {s.name: (read_mot(s.gt, "gt", s.length), read_mot(s.results, "results", s.length)) for s in sequences}
    accs = [accumulate(g, r, iou_threshold) for g, r in pairs.values()]
    # Over all sequences: one accumulator holding every sequence, frames and ids shifted apart, which is what
    # compute_many's ``generate_overall`` is documented to compute (its ``merge_event_dataframes`` does this
    # but calls DataFrame.append, gone in pandas 2). compute_many's shortcut, merging per-sequence results,
    # makes MOTP NaN as soon as one sequence has no match (``motp_m``: NaN x 0, motmetrics 1.4.0); all else
    # agrees with it (the tests check both).
    merged, frame_offset, gt_offset, res_offset = None, 0, 0, 0
    for g, r in pairs.values():
        merged = accumulate(g, r, iou_threshold, merged, frame_offset, gt_offset, res_offset)
        frame_offset += int(_frames(g, r).max(initial=0))
        gt_offset += int(g.ids.max(initial=-1)) + 1
        res_offset += int(r.ids.max(initial=-1)) + 1
    names = list(pairs)
    host, wanted = mm.metrics.create(), [*MOTMETRICS.values(), "motp"]
    summary = pd.concat([host.compute_many(accs, metrics=wanted, names=names),
                         host.compute(merged, metrics=wanted, name="OVERALL")])
    hota_seq, hota_all, hota_missing = _hota(pairs)

    def row(label: str, pred_tracks: int, hota: dict) -> dict:
        out = {}
        for key in SUMMARY_KEYS:
            if key in MOTMETRICS:
                out[key] = _clean(summary.loc[label, MOTMETRICS[key]])
            elif key == "MOTP":
                out[key] = _clean(1.0 - summary.loc[label, "motp"])
            elif key == "pred_tracks":
                out[key] = pred_tracks
            else:
                out[key] = hota.get(key)
        for key in COUNTS:
            if out[key] is not None:
                out[key] = int(out[key])
        return out

    per_seq = {n: row(n, len(np.unique(pairs[n][1].ids)), hota_seq.get(n, {})) for n in names}
    overall = row("OVERALL", sum(v["pred_tracks"] for v in per_seq.values()), hota_all)
    import importlib.metadata as md

    libraries = {"motmetrics": md.version("motmetrics")}
    if hota_missing is None:
        libraries["trackeval"] = md.version("trackeval")
    result = {**overall, "iou_threshold": iou_threshold, "sequences": names,
              "files": {s.name: {"gt": str(s.gt), "results": str(s.results)} for s in sequences},
              "per_sequence": per_seq, "libraries": libraries}
    if hota_missing is not None:
        result["HOTA_unavailable"] = hota_missing
    return result


# ----------------------------------------------------------------------------------------------- tables


def mot_tables(metrics: dict, per_sequence: bool = False) -> list:
    """Rich tables: the overall metrics with their meaning, and (``per_sequence``) one row per sequence."""
    from rich.table import Table

    from groundscope.evaluate.report import fmt

    n = len(metrics["sequences"])
    title = (f"tracking: {n} sequence{'s' if n != 1 else ''}, IoU >= {metrics['iou_threshold']:g} "
             f"(motmetrics {metrics['libraries']['motmetrics']}"
             + (f", trackeval {metrics['libraries']['trackeval']})" if "trackeval" in metrics["libraries"] else ")"))
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("", style="dim")
    for key in SUMMARY_KEYS:
        meaning = MEANING[key]
        if metrics[key] is None and key in HOTA_KEYS and "HOTA_unavailable" in metrics:
            meaning = metrics["HOTA_unavailable"]
        table.add_row(key, fmt(metrics[key]), meaning)
    tables = [table]
    if per_sequence:
        cols = ("HOTA", "MOTA", "IDF1", "IDSW", "FP", "FN", "GT_tracks", "pred_tracks")
        seq = Table(title="per sequence", title_justify="left")
        seq.add_column("sequence")
        for c in cols:
            seq.add_column(c, justify="right")
        for name, values in metrics["per_sequence"].items():
            seq.add_row(name, *(fmt(values[c]) for c in cols))
        tables.append(seq)
    return tables
