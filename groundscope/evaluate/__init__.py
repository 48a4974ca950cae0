"""Benchmarks of the four papers, computed exactly as the official tools compute them.

============  ==========================================  ===============================================
metric        function                                    CLI
============  ==========================================  ===============================================
COCO          `evaluate_coco` (box, mask, per-class AP)    ``groundscope eval coco GT RESULTS``
LVIS          `evaluate_lvis` (standard + fixed AP)        ``groundscope eval lvis GT RESULTS``
ODinW         `evaluate_odinw` (per dataset + average)     ``groundscope eval odinw NAME GT RESULTS ...``
RefCOCO/+/g   `evaluate_refexp` (P@1/5/10)                 ``groundscope eval refexp GT RESULTS``
Flickr30k     `evaluate_phrase` (R@1/5/10, any-box)        ``groundscope eval phrase GT RESULTS``
any of them   `run_evaluation` (run a detector, resumable) ``groundscope eval run --model M --dataset ...``
============  ==========================================  ===============================================

File formats are in the docstrings of `validate` (COCO/LVIS), `refexp`, `phrase`, `odinw` and `odvg`. Bad input
raises `EvaluationInputError` (a ValueError) naming the file and the offending record.
"""

from groundscope.evaluate.coco import COCO_KEYS, evaluate_coco
from groundscope.evaluate.lvis import LVIS_AP_KEYS, evaluate_lvis
from groundscope.evaluate.odinw import evaluate_odinw, load_odinw_manifest
from groundscope.evaluate.phrase import evaluate_phrase
from groundscope.evaluate.refexp import evaluate_refexp
from groundscope.evaluate.run import DATASET_KINDS, run_evaluation
from groundscope.evaluate.validate import EvaluationInputError

__all__ = [
    "COCO_KEYS",
    "DATASET_KINDS",
    "LVIS_AP_KEYS",
    "EvaluationInputError",
    "evaluate_coco",
    "evaluate_lvis",
    "evaluate_odinw",
    "evaluate_phrase",
    "evaluate_refexp",
    "load_odinw_manifest",
    "run_evaluation",
]
