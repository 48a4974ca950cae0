"""Prompt construction with the real BERT-uncased tokenizer: spans, chunking, phrases, bad prompts."""

from __future__ import annotations

import pytest

from conftest import tokenizer_dir
from groundscope.prompts import (
    PromptError,
    chunk_classes,
    class_prompt,
    expression_prompt,
    find_phrase_spans,
    phrase_prompt,
)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


def test_class_prompt_text_spans_and_tokens(tok):
    p = class_prompt(tok, ["cat", "remote control", "couch"])
    assert p.text == "cat. remote control. couch."
    assert [p.text[s:e] for [(s, e)] in p.entity_spans] == ["cat", "remote control", "couch"]
    # [CLS] cat . remote control . couch . [SEP]
    assert p.input_ids[0].tolist() == [101, 4937, 1012, 6556, 2491, 1012, 6411, 1012, 102]
    assert p.token_spans == [[1], [3, 4], [6]]
    pm = p.positive_map()
    assert pm.shape == (3, 9) and pm[1, 3] == pm[1, 4] == 0.5 and pm.sum(-1).tolist() == [1.0, 1.0, 1.0]


def test_wordpieces_belong_to_their_class(tok):
    p = class_prompt(tok, ["hairdryer", "cat"])
    pieces = tok.convert_ids_to_tokens(p.input_ids[0][p.token_spans[0]].tolist())
    assert len(pieces) > 1 and pieces[1].startswith("##")


def test_chunks_are_greedy_ordered_complete_and_fit(tok):
    names = [f"object number {i} with a longer descriptive name" for i in range(60)]
    chunks = chunk_classes(tok, names, max_tokens=64)
    ids = [i for c in chunks for i in c.entity_ids]
    assert ids == list(range(60))  # nothing dropped, nothing split, order kept
    for c in chunks:
        assert c.num_tokens <= 64
    # Greedy: the next class would not have fitted in the previous chunk.
    for a, b in zip(chunks, chunks[1:]):
        extended = class_prompt(tok, [a.text[s:e] for [(s, e)] in a.entity_spans] + [names[b.entity_ids[0]]])
        assert extended.num_tokens > 64


def test_chunks_of_a_vocabulary_that_fits_are_one_prompt(tok):
    assert len(chunk_classes(tok, ["cat", "dog"], 256)) == 1


def test_names_with_dots_and_duplicates(tok):
    with pytest.warns(UserWarning, match="repeats index 0"):
        [p] = chunk_classes(tok, ["cat", "st. bernard", "Cat"], 256)
    assert p.text == "cat. st bernard."
    assert p.labels == ["cat", "st. bernard"] and p.entity_ids == [0, 1]


@pytest.mark.parametrize("bad,match", [([], "empty"), (["cat", "  "], "class 1"), ("cat, dog", "list of names"),
                                       (["cat", 3], "not a string")])
def test_bad_class_lists(tok, bad, match):
    with pytest.raises(PromptError, match=match):
        chunk_classes(tok, bad, 256)


def test_oversized_class_names_the_class(tok):
    with pytest.raises(PromptError, match="'word word.*over the model's 16-token"):
        chunk_classes(tok, ["cat", " ".join(["word"] * 30)], 16)


def test_phrase_spans(tok):
    cap = "A cat and another cat sit on a couch."
    assert find_phrase_spans(cap, ["cat", "cat", "couch"]) == [[(2, 5)], [(18, 21)], [(31, 36)]]
    assert find_phrase_spans(cap, [(2, 5), [(18, 21)]]) == [[(2, 5)], [(18, 21)]]
    with pytest.raises(PromptError, match="'dog' does not occur"):
        find_phrase_spans(cap, ["dog"])
    with pytest.raises(PromptError, match="outside the caption"):
        find_phrase_spans(cap, [(30, 99)])
    p = phrase_prompt(tok, "two cats on a couch", ["two cats", "a couch"])
    assert p.text == "two cats on a couch." and p.labels == ["two cats", "a couch"]
    assert tok.decode(p.input_ids[0][p.token_spans[1]]) == "a couch"


def test_expression_prompt_and_limits(tok):
    p = expression_prompt(tok, "the cat on the left.")
    assert p.text == "the cat on the left." and p.labels == ["the cat on the left"]
    assert tok.decode(p.input_ids[0][p.token_spans[0]]) == "the cat on the left"
    with pytest.raises(PromptError, match="empty"):
        expression_prompt(tok, " . ")
    with pytest.raises(PromptError, match="over|more than"):
        expression_prompt(tok, "word " * 300, max_tokens=256)
    with pytest.raises(PromptError, match="caption is empty"):
        phrase_prompt(tok, "   ", ["x"])


def test_caption_prompt_has_no_entities_and_a_limit(tok):
    from groundscope.prompts import caption_prompt

    p = caption_prompt(tok, "two cats on a couch")
    assert p.text == "two cats on a couch." and p.labels == [] and len(p.offsets) == p.num_tokens
    with pytest.raises(PromptError, match="more than the model's limit of 256"):
        caption_prompt(tok, "cat " * 300, max_tokens=256)


def test_messages_quote_long_user_text_cut_and_repeats_warn_once():
    """A 10,000-character class name is named by its start and length, not echoed whole; 400 repeated names give
    one warning, not 399."""
    import warnings

    from groundscope.prompts import _unique_classes, quoted

    assert quoted("cat") == "'cat'"
    assert quoted("x" * 10_000) == "'" + "x" * 60 + "...' (10000 characters)"
    with pytest.raises(PromptError) as e:
        _unique_classes(["ok", "  " + "." * 10_000])
    assert len(str(e.value)) < 200 and "(10002 characters)" in str(e.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idx, texts = _unique_classes(["a b"] * 400)
    assert (idx, texts) == ([0], ["a b"])
    assert [str(w.message) for w in caught] == [
        "class 'a b' (index 1) repeats index 0; its boxes go to index 0 (and 398 more repeated names)"]
