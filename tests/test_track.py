"""Tracking: the matcher, a track's class vote, the box-IoU tracker on scripted detections and on the synthetic
video world's ground truth, the SAM 2 tracker held to a streaming session driven by hand, the MOT / JSON / MP4
writers (read back by `evaluate_mot`, `masks.decode` and PyAV), and the named errors of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groundscope import masks as mask_ops
from groundscope.detections import Detections
from groundscope.track import Track, Tracker, TrackError, VideoReadError, mask_iou, match, open_video, track

H, W = 96, 160


class Scripted:
    """A detector whose answer on the k-th `detect` call is ``script[k]`` (a Detections)."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def detect(self, images, classes, box_threshold=0.3, max_detections=100):
        d = self.script[self.calls] if self.calls < len(self.script) else Detections.empty()
        self.calls += 1
        return [d]

    def refer(self, images, expression, top_k=1):
        return self.detect(images, [expression])


def dets(boxes, scores=None, class_ids=None, classes=("cat", "dog")):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = [0.9] * len(boxes) if scores is None else scores
    class_ids = [0] * len(boxes) if class_ids is None else class_ids
    return Detections(boxes, scores, class_ids, [classes[c] for c in class_ids])


def blank(n):
    return [np.full((H, W, 3), 128, np.uint8) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- matching
def test_match_is_the_maximum_iou_assignment_with_a_threshold():
    # greedy on the best pair (0, 0) would leave track 1 unmatched; the optimum pairs 0-1 and 1-0
    iou = np.array([[0.9, 0.8], [0.85, 0.1], [0.2, 0.3]])
    pairs, lost, fresh = match(iou, 0.5)
    assert pairs == [(0, 1), (1, 0)] and lost == [2] and fresh == []
    pairs, lost, fresh = match(np.array([[0.4]]), 0.5)  # under the threshold: no pair
    assert pairs == [] and lost == [0] and fresh == [0]
    assert match(np.zeros((0, 3)), 0.5) == ([], [], [0, 1, 2])


def test_mask_iou_by_hand():
    a = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True  # 4 px
    b = np.zeros((2, 4, 4), bool)
    b[0, :2, :1] = True  # 2 px inside a[0]
    got = mask_iou(a, b)
    assert got[0, 0] == pytest.approx(0.5) and got[1, 1] == 0 and got[0, 1] == 0


def test_class_is_the_highest_accumulated_score():
    t = Track(1, 0, np.zeros(4))
    for c, lab, s in [(0, "cat", 0.9), (1, "dog", 0.5), (1, "dog", 0.5)]:
        t.vote(c, lab, s)
    assert (t.class_id, t.label) == (1, "dog")  # 1.0 > 0.9: many weaker votes beat one strong one


# ---------------------------------------------------------------------------------------------- box-IoU mode
def test_box_tracker_keeps_ids_births_ends_and_relabels():
    a = lambda x: [x, 10, x + 20, 30]  # noqa: E731
    script = [
        dets([a(0)]),                                        # frame 0: object A born (id 1)
        dets([a(4), a(100)], [0.9, 0.8], [1, 0]),            # A moves (voted dog once), B born (id 2)
        dets([a(100), a(8)], [0.8, 0.9], [0, 1]),            # order swapped: ids follow the boxes
        dets([a(12)], [0.9], [1]),                           # B unseen (lost 1)
        dets([a(16)], [0.9], [1]),                           # B unseen (lost 2): ends with max_lost=2
        dets([a(20), a(100)], [0.9, 0.8], [1, 0]),           # the box where B was is a new object: id 3
    ]
    tracker = Tracker(Scripted(script), ["cat", "dog"], max_lost=2, min_hits=1, interpolate=0)
    per_frame = [tracker.update(f) for f in blank(len(script))]
    assert [d.tracker_id.tolist() for d in per_frame] == [[1], [1, 2], [1, 2], [1], [1], [1, 3]]
    assert tracker.live == [1, 3]
    out = tracker.finish()
    assert out.ids == [1, 2, 3]
    # A was seen as cat 0.9 once and as dog 0.9 five times: dog on every frame, frame 0 included
    assert all(out[f].labels[0] == "dog" and out[f].class_ids[0] == 1 for f in range(len(script)))
    assert [f for f, _, _ in out.track(2)] == [1, 2]
    np.testing.assert_allclose(out[2].xyxy[1], a(100))


def test_short_tracks_are_dropped_and_gaps_filled_on_the_line():
    a = lambda x: [x, 10, x + 20, 30]  # noqa: E731
    empty = Detections.empty()
    # A seen on frames 0, 1, 4 (a 2-frame gap), B (far away) only on frame 1: a one-off false positive
    script = [dets([a(0)]), dets([a(2), a(200)]), empty, empty, dets([a(8)], [0.6])]
    out = track(blank(5), ["cat"], detector=Scripted(script), max_lost=5, min_hits=3, interpolate=2,
                progress=False)
    assert out.ids == [1]  # B (1 hit) is gone; A has 3 hits
    assert [f for f, _, _ in out.track(1)] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(out[2].xyxy[0], a(4)) and np.testing.assert_allclose(out[3].xyxy[0], a(6))
    assert out[3].scores[0] == pytest.approx(0.6)  # the lower score of the sightings around the gap
    short = track(blank(5), ["cat"], detector=Scripted(script), max_lost=5, min_hits=3, interpolate=1,
                  progress=False)
    assert [f for f, _, _ in short.track(1)] == [0, 1, 4]  # a 2-frame gap is longer than interpolate=1


def test_oracle_detections_on_the_synthetic_video_world_keep_their_identities(tmp_path):
    """Ground-truth boxes as detections on 2 clips: every box is tracked (no FP / FN) and identities hold (IDF1 >=
    0.95). The one hard case is an object entering the frame, whose visible sliver grows faster than it overlaps
    itself: without the buffered second round (buffer=0) it changes id several times there."""
    from groundscope.data.synth_video import generate_video_world
    from groundscope.evaluate.mot import evaluate_mot, read_mot

    generate_video_world(tmp_path / "w", 2, 40, seed=7, size=(240, 180), video=False)
    switches = {}
    for buffer in (0.5, 0.0):
        for seq in sorted((tmp_path / "w").glob("synth-*")):
            gt = read_mot(seq / "gt" / "gt.txt", kind="gt")
            script = []
            for f in range(1, 41):
                b = gt.boxes[gt.frames == f].astype(np.float32)  # xywh, 1-based left / top
                script.append(dets(np.c_[b[:, 0] - 1, b[:, 1] - 1, b[:, 0] - 1 + b[:, 2], b[:, 1] - 1 + b[:, 3]]))
            frames = sorted((seq / "img1").glob("*.png"))
            out = track(frames, ["shape"], detector=Scripted(script), max_lost=3, buffer=buffer,
                        min_hits=1, interpolate=0, progress=False)
            m = evaluate_mot(seq / "gt" / "gt.txt", out.write_mot(tmp_path / f"{seq.name}.txt"))
            assert m["FP"] == 0 and m["FN"] == 0
            if buffer:
                assert m["IDF1"] >= 0.95, (seq.name, m["IDF1"])
            switches[buffer] = switches.get(buffer, 0) + m["IDSW"]
    assert switches[0.5] <= 3 and switches[0.0] >= switches[0.5] + 3, switches


# ---------------------------------------------------------------------------------------------- SAM 2 mode
@pytest.fixture(scope="module")
def vs(tiny_sam2_video_dir):
    from groundscope.models.video_segmenter import load_video_segmenter

    return load_video_segmenter(tiny_sam2_video_dir)


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def test_segmenter_tracker_propagates_as_the_session_does(vs, one_thread):
    """Two boxes detected on frame 0, the same boxes on keyframe 4: the tracker's masks on every frame equal a
    session prompted with those boxes on frame 0 and stepped by hand (the keyframe's detections match the live
    tracks, so nothing restarts)."""
    frames = random_frames(8)
    boxes = [[10, 10, 60, 50], [80, 20, 150, 90]]
    tracker = Tracker(Scripted([dets(boxes), dets(boxes)]), ["cat"], segmenter=vs, every=4, match_iou=0.0,
                      lost_score=0.0, min_hits=1)
    got = [tracker.update(f) for f in frames]
    session = vs.start()
    ref = [session.add(0, frames[0], [1, 2], box=boxes)] + [session.step(f) for f in frames[1:]]
    for t, (d, r) in enumerate(zip(got, ref)):
        want = [i for i in (1, 2) if r[i][0].any()]
        assert d.tracker_id.tolist() == want, f"frame {t}"
        for k, i in enumerate(want):
            assert np.array_equal(mask_ops.decode([d.masks[k]])[0], r[i][0]), f"frame {t}, object {i}"
    assert tracker.tracks.keys() == {1, 2}  # the keyframe started no third track


def test_segmenter_tracker_follows_a_given_box_and_writes_files(vs, one_thread, tmp_path):
    import av

    frames = random_frames(6, seed=1)
    out = track(frames, segmenter=vs, box=[20, 20, 90, 70], frame=2, label="thing", lost_score=0.0,
                min_hits=1, progress=False)
    assert len(out) == 6 and all(len(out[f]) == 0 for f in (0, 1))
    session = vs.start()
    for f in frames[:2]:
        session.step(f)
    ref = [session.add(2, frames[2], 1, box=[20, 20, 90, 70])] + [session.step(f) for f in frames[3:]]
    for t, r in enumerate(ref, start=2):
        if r[1][0].any():
            assert np.array_equal(out[t].mask_array()[0], r[1][0])
    assert out.classes == ["thing"]

    out.write_mot(tmp_path / "t.txt")
    first = (tmp_path / "t.txt").read_text().splitlines()[0].split(",")
    assert first[0] == "3" and first[1] == "1" and first[-3:] == ["-1", "-1", "-1"]
    doc = json.loads(out.write_json(tmp_path / "t.json").read_text())
    assert doc["num_frames"] == 6 and doc["width"] == W and doc["height"] == H
    rec = doc["tracks"][0]
    assert rec["id"] == 1 and rec["label"] == "thing" and rec["start"] == 2
    mask = mask_ops.decode([rec["frames"][0]["mask"]])[0]
    assert mask.shape == (H, W) and np.array_equal(mask, out[2].mask_array()[0])
    assert out.write_video(tmp_path / "t.mp4", frames) == 6
    with av.open(str(tmp_path / "t.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (H, W, 3)


# ---------------------------------------------------------------------------------------------- python API
def test_detections_carry_tracker_ids_through_lists_and_supervision():
    d = Detections([[0, 0, 5, 5], [1, 1, 4, 4]], [0.5, 0.7], [0, 1], ["a", "b"], tracker_id=[3, 9])
    back = Detections.from_list(d.to_list())
    assert back.tracker_id.tolist() == [3, 9] and d[[1]].tracker_id.tolist() == [9]
    assert Detections.merge([d, d]).tracker_id.tolist() == [3, 9, 3, 9]
    with pytest.raises(ValueError, match="tracker_id"):
        Detections([[0, 0, 1, 1]], [0.5], [0], ["a"], tracker_id=[1, 2])
    sv = pytest.importorskip("supervision")
    s = d.to_supervision()
    assert isinstance(s, sv.Detections) and s.tracker_id.tolist() == [3, 9]
    assert Detections.from_supervision(s).tracker_id.tolist() == [3, 9]


def test_the_package_is_callable_as_gs_track():
    import groundscope as gs
    import groundscope.track

    out = gs.track(blank(2), ["cat"], detector=Scripted([dets([[1, 1, 9, 9]])] * 2), min_hits=1,
                   progress=False)
    assert out.ids == [1] and callable(groundscope.track)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_is_named(tmp_path, vs):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 50)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        open_video(bad)
    with pytest.raises(VideoReadError, match="no such file"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="holds no frames"):
        open_video(tmp_path / "empty")
    with pytest.raises(TrackError, match="no classes given"):
        track(blank(2), [" ", ""], detector=Scripted([]), progress=False)
    with pytest.raises(TrackError, match="past the end"):
        track(blank(3), segmenter=vs, box=[1, 1, 20, 20], frame=3, progress=False)
    with pytest.raises(TrackError, match="needs a segmenter"):
        track(blank(3), box=[1, 1, 20, 20], progress=False)
    with pytest.raises(TrackError, match="x1 < x2"):
        track(blank(3), segmenter=vs, box=[20, 1, 10, 20], progress=False)


def test_cli_errors_exit_2(tmp_path):
    from typer.testing import CliRunner

    from groundscope.cli import app

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"garbage" * 100)
    runner = CliRunner()
    r = runner.invoke(app, ["track", str(bad), "--classes", "cat", "--model", "nano"])
    assert r.exit_code == 2 and "broken.mp4" in r.output
    r = runner.invoke(app, ["track", str(bad), "--classes", " , "])
    assert r.exit_code == 2 and "no classes" in r.output
    r = runner.invoke(app, ["track", str(bad), "--box", "1,1,20,20"])
    assert r.exit_code == 2 and "--segmenter" in r.output
