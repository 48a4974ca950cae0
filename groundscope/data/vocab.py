"""Vocabulary of the synthetic grounding world and its open-vocabulary split.

Attributes of an object: colour (8), shape (8), size (3), texture (4). A class is ``"<colour> <shape>"``
(``"red circle"``), so there are 64 classes.

Open-vocabulary split (fixed, so every generated dataset agrees):

* **Novel combinations** (`NOVEL_COMBOS`): 8 (colour, shape) pairs, one per colour and one per shape, that
  never occur in a training image, caption, expression or category list; every colour and every shape is
  still seen in training with 7 other partners, so the test asks for a new *combination*, not a new word.
  ``red star, orange heart, yellow square, green cross, cyan triangle, blue crescent, purple circle,
  pink diamond``.
* **Base classes**: the other 56 combinations (`base_classes`), the training vocabulary.
* **Test-only colour synonyms** (`TEST_SYNONYMS`): ``crimson`` (red), ``tangerine`` (orange), ``golden``
  (yellow), ``emerald`` (green), ``turquoise`` (cyan), ``azure`` (blue), ``violet`` (purple), ``magenta``
  (pink). Training text only ever uses the canonical colour names; the test split's
  ``coco_synonyms.json`` names the base classes with these words instead (``"crimson circle"``).
* **Training paraphrases** (`TRAIN_PARAPHRASES`): eight other words per colour (``scarlet``, ``amber``,
  ``lemon`` ...), disjoint from the test synonyms and from their word forms (no ``gold``, no ``fuchsia``).
  The train split writes them to ``paraphrases.json``; `groundscope.data.paraphrase` swaps them in for the
  canonical word at training time (``data.paraphrases``), so that the detector reads a colour word through
  MiniLM's pretrained meaning rather than one token's identity, which is what a test-only synonym asks of it.
  They are chosen from colour vocabulary alone, never by a test score. Measured as a second training stage
  (``benchmarks/results/nano_stage2.md``): synonyms AP50 0.133 -> 0.193, base AP50 0.794 -> 0.657, so the
  bundled nano does not use them.

Colours are far apart in hue and saturation so a small model can separate them at 320-640 px; the
backgrounds drawn by `groundscope.data.render` are low-saturation so they never look like an object colour.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Colour:
    name: str
    rgb: tuple[int, int, int]
    test_synonym: str


COLOURS: tuple[Colour, ...] = (
    Colour("red", (214, 32, 32), "crimson"),
    Colour("orange", (245, 132, 18), "tangerine"),
    Colour("yellow", (242, 212, 26), "golden"),
    Colour("green", (36, 160, 56), "emerald"),
    Colour("cyan", (24, 196, 212), "turquoise"),
    Colour("blue", (34, 72, 214), "azure"),
    Colour("purple", (132, 48, 184), "violet"),
    Colour("pink", (246, 124, 192), "magenta"),
)
COLOUR_NAMES: tuple[str, ...] = tuple(c.name for c in COLOURS)
TRAIN_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "red": ("scarlet", "ruby", "cherry", "maroon", "burgundy", "brick", "blood", "tomato"),
    "orange": ("amber", "apricot", "peach", "pumpkin", "copper", "rust", "carrot", "ginger"),
    "yellow": ("lemon", "mustard", "canary", "banana", "butter", "sunflower", "honey", "blonde"),
    "green": ("lime", "jade", "olive", "grass", "mint", "forest", "leaf", "sage"),
    "cyan": ("teal", "aqua", "sky", "cerulean", "ocean", "ice", "lagoon", "pool"),
    "blue": ("navy", "cobalt", "sapphire", "indigo", "denim", "ultramarine", "royal", "cornflower"),
    "purple": ("lavender", "lilac", "plum", "mauve", "grape", "amethyst", "orchid", "eggplant"),
    "pink": ("rose", "salmon", "blush", "coral", "bubblegum", "flamingo", "carnation", "peony"),
}
COLOUR_RGB: dict[str, tuple[int, int, int]] = {c.name: c.rgb for c in COLOURS}
TEST_SYNONYMS: dict[str, str] = {c.name: c.test_synonym for c in COLOURS}

# Shapes chosen to stay distinct at ~32 px and under the small rotations the renderer applies: no pair is a
# rotation of another (the diamond is a tall rhombus, not a turned square).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross", "heart", "crescent")

# Side of the object's square footprint in pixels. The gaps between bins keep "small"/"medium"/"large"
# unambiguous, so the size word in a referring expression can be read off the image.
SIZES: dict[str, tuple[int, int]] = {"small": (36, 50), "medium": (64, 84), "large": (102, 130)}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

NOVEL_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("orange", "heart"),
        ("yellow", "square"),
        ("green", "cross"),
        ("cyan", "triangle"),
        ("blue", "crescent"),
        ("purple", "circle"),
        ("pink", "diamond"),
    }
)


def class_name(colour: str, shape: str) -> str:
    """``("red", "circle") -> "red circle"``."""
    return f"{colour} {shape}"


def all_combos() -> list[tuple[str, str]]:
    """All 64 (colour, shape) pairs in a fixed order (colour-major)."""
    return [(c, s) for c in COLOUR_NAMES for s in SHAPES]


def base_combos() -> list[tuple[str, str]]:
    return [cs for cs in all_combos() if cs not in NOVEL_COMBOS]


def novel_combos() -> list[tuple[str, str]]:
    return [cs for cs in all_combos() if cs in NOVEL_COMBOS]


def base_classes() -> list[str]:
    """The 56 training class names, the detection vocabulary of the train split."""
    return [class_name(*cs) for cs in base_combos()]


def novel_classes() -> list[str]:
    """The 8 held-out class names."""
    return [class_name(*cs) for cs in novel_combos()]


def synonym_class_name(colour: str, shape: str) -> str:
    """Class name with the test-only colour synonym: ``("red", "circle") -> "crimson circle"``."""
    return class_name(TEST_SYNONYMS[colour], shape)


def split_definition(include_held_out: bool = True) -> dict:
    """The vocabulary and open-vocabulary split as plain data (written to ``meta.json``).

    ``include_held_out=False`` leaves out the novel classes and test-only synonyms, so nothing written for
    the train split names them.
    """
    out = {
        "colours": {c.name: list(c.rgb) for c in COLOURS},
        "shapes": list(SHAPES),
        "sizes": {k: list(v) for k, v in SIZES.items()},
        "textures": list(TEXTURES),
        "base_classes": base_classes(),
    }
    if include_held_out:
        out["novel_classes"] = novel_classes()
        out["test_only_synonyms"] = dict(TEST_SYNONYMS)
    return out
