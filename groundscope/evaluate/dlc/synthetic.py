"""Questions about the synthetic world's regions in DLC-Bench's structure, built from the attributes the
renderer drew, so a judge can be checked where the right answer is known: `region_questions` for one object,
`synthetic_bench` for every region of a set of records (a `DlcBench`, writable as DLC-Bench's files). Each
question carries a `rule` that `RuleJudge` (`groundscope.evaluate.dlc.rules`) answers by exact words."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from groundscope.data.captions import neighbours
from groundscope.data.records import ImageRecord
from groundscope.data.scene import RELATIONS, SceneObject, relation_holds
from groundscope.data.vocab import COLOUR_NAMES, SHAPES
from groundscope.evaluate.dlc.questions import Question, _article, plural
from groundscope.evaluate.validate import EvaluationInputError

QUESTION = "Which of the following is applicable to the description?"
_NOUN = {"colour": "colour", "shape": "shape", "size": "size", "pattern": "pattern"}


def _value_words(attribute: str, value: str) -> str:
    return f"{_article(value)} {value}" if attribute == "shape" else value


def _positive(attribute: str, value: str, obj: Mapping[str, str]) -> Question:
    noun = _NOUN[attribute]
    said = _value_words(attribute, value)
    choices = (
        ("The object is not mentioned.", 0),
        (f"The {noun} of the object is not mentioned, but the object is mentioned.", 0.5),
        (f"The {noun} of the object is mentioned in the description but is not {said}.", -1),
        (f"The {noun} of the object is mentioned in the description and is {said}.", 1),
    )
    return Question(QUESTION, choices, "positive", attribute,
                    {"kind": attribute, "value": value, "object": dict(obj)})


def _relation_question(target: SceneObject, holds: list[str], obj: Mapping[str, str]) -> Question:
    name = f"the {target.size} {target.colour} {target.shape}"
    said = " or ".join(holds)
    choices = (
        ("The object is not mentioned.", 0),
        (f"The position of the object relative to {name} is not mentioned, but the object is mentioned.", 0.5),
        (f"The position of the object relative to {name} is mentioned in the description but is not {said} it.",
         -1),
        (f"The position of the object relative to {name} is mentioned in the description and is {said} it.", 1),
    )
    rule = {"kind": "relation", "holds": holds, "object": dict(obj),
            "target": {"size": target.size, "colour": target.colour, "shape": target.shape}}
    return Question(QUESTION, choices, "positive", "relation", rule)


def _wrong_colour_question(colour: str, obj: Mapping[str, str]) -> Question:
    choices = ((f"The object is not described as {colour}.", 1), (f"The object is described as {colour}.", -1),
               ("The object is not mentioned in the description.", 0))
    return Question(QUESTION, choices, "negative", "wrong colour",
                    {"kind": "wrong colour", "value": colour, "object": dict(obj)})


def _absent_shape_question(shape: str, obj: Mapping[str, str]) -> Question:
    name = plural(shape).capitalize()
    choices = ((f"{name} are not mentioned in the description.", 1), (f"{name} are mentioned in the description.", -1))
    return Question(QUESTION, choices, "negative", "absent shape",
                    {"kind": "absent shape", "value": shape, "object": dict(obj)})


def scene_objects(record: ImageRecord, source: str = "<scene>") -> list[SceneObject]:
    """The `SceneObject`s of a synthetic world's record (COCO ``coco.json`` / ``coco_all.json`` keep each
    object's colour, shape, size, texture and side in ``attributes``)."""
    objects = []
    for k, inst in enumerate(record.instances):
        a = inst.attributes or {}
        missing = [key for key in ("colour", "shape", "size", "texture") if key not in a]
        if missing:
            raise EvaluationInputError(source, f"instance has no {', '.join(missing)} attribute(s); synthetic "
                                       "questions need a synthetic world's COCO file (coco.json / coco_all.json)",
                                       f"{record.filename} instance {k}")
        objects.append(SceneObject(colour=a["colour"], shape=a["shape"], size=a["size"], texture=a["texture"],
                                   side=int(a.get("side", 0)), box=tuple(inst.bbox),
                                   full_box=tuple(a.get("full_bbox", inst.bbox))))
    return objects


def _region_id(record: ImageRecord, k: int) -> str:
    inst = record.instances[k]
    return str(inst.id) if inst.id is not None else f"{record.image_id or record.filename}:{k}"


def region_questions(index: int, objects: Sequence[SceneObject]) -> list[Question]:
    """Questions about ``objects[index]``: positives on its colour, shape, pattern, size and one relation (to
    the nearer of its two nearest neighbours that lies clearly to one side of it and has no twin of the same
    size, colour and shape; none when neither does); negatives claiming the colour of the nearest
    differently coloured object (the next vocabulary colour when there is none) and a shape absent from the
    scene (none when all eight are present). Deterministic."""
    o = objects[index]
    obj = {"colour": o.colour, "shape": o.shape, "size": o.size, "texture": o.texture}
    questions = [_positive("colour", o.colour, obj), _positive("shape", o.shape, obj),
                 _positive("pattern", o.texture, obj), _positive("size", o.size, obj)]
    # The two nearest neighbours, the ones a description places the object against (`captions.describe`).
    for j in neighbours(index, objects, k=2):
        t = objects[j]
        # A neighbour with a twin (same size, colour and shape) could be either of two objects: skip it.
        twins = [i for i, u in enumerate(objects) if (u.size, u.colour, u.shape) == (t.size, t.colour, t.shape)]
        holds = [r for r in RELATIONS if relation_holds(r, o, t)]
        if holds and len(twins) == 1:
            questions.append(_relation_question(t, holds, obj))
            break
    order = neighbours(index, objects, k=len(objects))
    wrong = next((objects[j].colour for j in order if objects[j].colour != o.colour), None)
    if wrong is None:  # a lone object, or only same-coloured neighbours: the next colour of the vocabulary
        wrong = COLOUR_NAMES[(COLOUR_NAMES.index(o.colour) + 1) % len(COLOUR_NAMES)]
    questions.append(_wrong_colour_question(wrong, obj))
    present = {u.shape for u in objects}
    start = SHAPES.index(o.shape)
    absent = [SHAPES[(start + 1 + k) % len(SHAPES)] for k in range(len(SHAPES))]
    absent = [s for s in absent if s not in present]
    if absent:
        questions.append(_absent_shape_question(absent[0], obj))
    return questions


@dataclass
class DlcBench:
    """A DLC-Bench-shaped benchmark in memory: qa, class names, areas, and reference descriptions.

    ``descriptions`` are the records' own region descriptions (what a perfect describer writes), handy as
    predictions to check a judge: with `RuleJudge` they score Pos = Neg = 1.
    """

    qa: dict[str, list[Question]]
    class_names: dict[str, str]
    areas: dict[str, float]
    descriptions: dict[str, str]
    image_of: dict[str, str] = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write qa.json, class_names.json, annotations.json (minimal COCO) and descriptions.json."""
        from groundscope.evaluate.report import write_json

        out = Path(out_dir)
        images = sorted(set(self.image_of.values()))
        image_ids = {name: k + 1 for k, name in enumerate(images)}
        cats = sorted(set(self.class_names.values()))
        cat_ids = {name: k + 1 for k, name in enumerate(cats)}
        anns = [{"id": int(r) if r.isdigit() else r, "image_id": image_ids.get(self.image_of.get(r), 0),
                 "category_id": cat_ids[self.class_names[r]], "area": self.areas[r]} for r in self.qa]
        coco = {"images": [{"id": image_ids[n], "file_name": n} for n in images], "annotations": anns,
                "categories": [{"id": cat_ids[n], "name": n} for n in cats]}
        files = {"qa": out / "qa.json", "class_names": out / "class_names.json",
                 "annotations": out / "annotations.json", "descriptions": out / "descriptions.json"}
        write_json(files["qa"], {r: [q.as_dict() for q in qs] for r, qs in self.qa.items()})
        write_json(files["class_names"], self.class_names)
        write_json(files["annotations"], coco)
        write_json(files["descriptions"], self.descriptions)
        return files


def synthetic_bench(records: Iterable[ImageRecord], source: str = "<scene>") -> DlcBench:
    """DLC-Bench-style questions for every region of the synthetic world's records (`region_questions`).

    Region ids are the annotation ids; the class name (for the recognition question) is the shape, as
    DLC-Bench names the object's kind ("wild bird") and asks its attributes in questions; the area is the
    visible box's.
    """
    qa, names, areas, descriptions, image_of = {}, {}, {}, {}, {}
    for record in records:
        objects = scene_objects(record, source)
        for k, o in enumerate(objects):
            region = _region_id(record, k)
            if region in qa:
                raise EvaluationInputError(source, f"region id {region} occurs twice; annotation ids must be "
                                           "unique", f"{record.filename} instance {k}")
            qa[region] = region_questions(k, objects)
            names[region] = o.shape
            x1, y1, x2, y2 = o.box
            areas[region] = float((x2 - x1) * (y2 - y1))
            descriptions[region] = record.instances[k].description or ""
            image_of[region] = record.filename
    if not qa:
        raise EvaluationInputError(source, "no regions: the records have no instances")
    return DlcBench(qa=qa, class_names=names, areas=areas, descriptions=descriptions, image_of=image_of)
