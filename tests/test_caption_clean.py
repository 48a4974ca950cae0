"""`groundscope.data.caption_clean`: speculation removed from detailed captions, region phrases normalised.

Expected outputs are written by hand from the rules in the module doc; captions are in the style of the
multimodal-LLM captions LLMDet trains on.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from groundscope.data.caption_clean import clean_caption, clean_region_phrase, is_speculative, official_clean_caption

CAPTION = (
    "The image shows a cozy living room with a large gray sofa against the wall. "
    "A small wooden coffee table stands in front of the sofa, holding two white mugs. "
    "The mugs are possibly filled with coffee. "
    "On the left, a tall bookshelf is packed with books; it seems to be made of oak. "
    "A dog, likely a golden retriever, lies on a striped rug. "
    "The warm lighting suggests that it is evening. "
    "The overall appearance of the room is tidy and bright."
)
CLEANED = (
    "The image shows a cozy living room with a large gray sofa against the wall. "
    "A small wooden coffee table stands in front of the sofa, holding two white mugs. "
    "On the left, a tall bookshelf is packed with books. "
    "A dog lies on a striped rug. "
    "The overall appearance of the room is tidy and bright."
)


def test_detailed_caption_keeps_only_certain_text():
    assert clean_caption(CAPTION) == CLEANED


@pytest.mark.parametrize(
    "text, expected",
    [
        # whole sentences whose claim is a guess go
        ("A man stands at the counter. He is probably the owner of the shop.", "A man stands at the counter."),
        ("Maybe it is raining. The street is wet.", "The street is wet."),
        ("Perhaps the photo was taken at noon.", ""),
        ("It is unlikely that anyone lives here. A door is open.", "A door is open."),
        ("The shadows indicate late afternoon. A bench is empty.", "A bench is empty."),
        ("The uniforms imply a sports event. Two players shake hands.", "Two players shake hands."),
        ("The sky looks like it will rain. A red umbrella is open.", "A red umbrella is open."),
        ("The object could be a lamp. The object might be a vase. It may be a toy. A cat sleeps.", "A cat sleeps."),
        ("The man appeared tired. The woman seemingly smiles. A kite is flying.", "A kite is flying."),
        ("Appearing in the corner is a clock.\nA calendar hangs beside it.", "A calendar hangs beside it."),
        # a hedge that is the clause's main claim drops the clause, not just the comma segment
        ("It appears to be dusk, with long shadows on the road.", ""),
        ("Possibly, the man is a chef. He holds a knife!", "He holds a knife!"),
        ("In the background, possibly a mountain range rises. A lake is calm.", "A lake is calm."),
        # parenthetical hedges go alone, with their commas
        ("A cup, possibly of coffee, sits on the desk.", "A cup sits on the desk."),
        ("A man holds a cup, probably of tea.", "A man holds a cup."),
        ('A sign, which appears to be handwritten, reads "OPEN".', 'A sign reads "OPEN".'),
        ("A plate, a fork, perhaps a spoon, and a knife lie on the table.", "A plate, a fork, and a knife lie on the table."),
        # independent clauses joined by ';' are judged one by one
        ("The walls are white; they seem freshly painted.", "The walls are white."),
        ("It is likely a school; a flag flies above the door.", "A flag flies above the door."),
    ],
)
def test_speculation_removed(text, expected):
    assert clean_caption(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The statue has a weathered appearance, with green patina on its shoulders.",
        "A turn indicator on the blue car blinks.",
        "The seamless glass facade reflects the clouds.",
        "A dog looks at the camera.",
        "The bakery window displays fresh bread, cakes, and pies.",
        "Three children like the swings.",
    ],
)
def test_certain_sentences_are_kept_verbatim(text):
    assert not is_speculative(text)
    assert clean_caption(text) == text


def test_whitespace_is_normalised():
    text = "  A red   bus\tstops at the curb.\n\n   Passengers wait   in line.  "
    assert clean_caption(text) == "A red bus stops at the curb. Passengers wait in line."
    assert clean_caption("") == "" and clean_caption("   \n ") == ""


def test_markers_match_whole_words_case_insensitively():
    assert is_speculative("PROBABLY a cat") and is_speculative("it Seems so") and is_speculative("this suggestion")
    assert is_speculative("it appears") and is_speculative("it appeared") and is_speculative("it is appearing")
    assert not is_speculative("its appearance") and not is_speculative("a battery indicator")
    assert not is_speculative("maybelline lipstick") and not is_speculative("a mayor")


@pytest.mark.parametrize(
    "phrase, expected",
    [
        # LLMDet's clean_phrase: lower, strip ".", each listed prefix removed once in list order, capitalize
        ("a small red circle", "Small red circle."),
        ("The two striped blue squares", "Striped blue squares."),
        ("two the cats", "The cats."),  # "the " is tried before "two ", once
        ("the the cat", "The cat."),
        ("an old oak tree.", "Old oak tree."),
        ("3 green apples", "3 green apples."),  # digits are not in the official list
        ("the 12 eggs in a carton...", "12 eggs in a carton."),
        ("eight pens", "Eight pens."),  # the official list spells it "eigth "
        ("nine pens", "Pens."),
        ("a woman in a red dress.", "Woman in a red dress."),
        ("one of the players", "Of the players."),
        ("Eiffel Tower", "Eiffel tower."),
        ("anchor", "Anchor."),
        ("theatre seats", "Theatre seats."),
        ("the", "The."),
        ("  a dog  ", "Dog."),  # groundscope strips surrounding white space first
    ],
)
def test_region_phrase(phrase, expected):
    assert clean_region_phrase(phrase) == expected


@pytest.mark.parametrize("phrase", ["", "   ", "...", "a ."])
def test_region_phrase_empty_names_input(phrase):
    with pytest.raises(ValueError) as err:
        clean_region_phrase(phrase)
    assert repr(phrase) in str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        # LLMDet's keywords that groundscope's list lacked
        ("The room is not tidy. A lamp glows.", "A lamp glows."),
        ("There is no dog on the grass. A cat sleeps.", "A cat sleeps."),
        ("I assume it is noon. A clock ticks.", "A clock ticks."),
        ("The guests are expected soon. A table is set.", "A table is set."),
        ("Someone might guess it is spring. Tulips bloom.", "Tulips bloom."),
        ("The crowd tends to gather here. A fountain sprays.", "A fountain sprays."),
        ("A dog, supposedly tame, sits.", "A dog, supposedly tame, sits."),  # "supposedly" is no keyword
        ("Not a cloud is in the sky.", "Not a cloud is in the sky."),  # " not " needs a space before it
    ],
)
def test_official_keywords_are_speculative(text, expected):
    assert clean_caption(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("There is no dog on the grass. A cat sleeps.", "A cat sleeps."),
        ("A man, who appears tired, sits on a bench.", "A man sits on a bench."),
        ("A cup sits on the desk, possibly of coffee", "A cup sits on the desk."),
        ("In the corner, it seems dark. A lamp glows.", "A lamp glows."),  # only "In the corner." left: dropped
        ("The statue has a weathered appearance.", "The statue has a weathered appearance."),
        ("Possibly a party.", "Possibly a party."),  # the official match is case-sensitive
        ("It is possibly a party. A cake stands.", "A cake stands."),
    ],
)
def test_official_clean_caption(text, expected):
    assert official_clean_caption(text) == expected


def test_module_does_not_import_torch():
    code = "import sys, groundscope.data.caption_clean; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
