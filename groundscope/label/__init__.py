"""Auto-labelling: run a detector over images or folders and write a COCO or ODVG training file.

    from groundscope.label import LabelSettings, label_images
    report = label_images(paths, "labels.json", "coco", LabelSettings(model="nano", classes=["red circle"]))

The work is cut into fixed chunks of ``batch_size`` images (`work.plan_chunks`); every chunk's results are
appended to ``FILE.partial.jsonl`` as soon as they exist (`partial.PartialLog`), so an interrupted run resumes
where it stopped, and the final file is assembled in input order and written atomically (`writer`). The chunks
run in this process (`run.local_executor`) or on a Ray cluster (`ray_pipeline.ray_executor`); both give the same
file. The command line is `groundscope label` (`groundscope.cli.label`).

`groundingcap` builds LLMDet's GroundingCap records the same way: a detector grounds the noun phrases of each
image's detailed caption (`groundscope groundingcap`).
"""

from groundscope.label.run import LabelError, LabelReport, label_images
from groundscope.label.work import LabelSettings

__all__ = ["LabelError", "LabelReport", "LabelSettings", "label_images"]
