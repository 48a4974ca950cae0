"""LLMDet diagnostics, step 1: cache the bundled nano's views of a synthetic world for caption-head experiments.

    python benchmarks/diagnostics/cache.py synth_train 2000 runs/capdiag/train.pt
    python benchmarks/diagnostics/cache.py synth_test 100 runs/capdiag/test.pt

Results: benchmarks/results/llmdet_synth.md ("Why the image captions do not yet depend on the image").
"""
import json, sys, torch
from pathlib import Path
from tqdm import tqdm
from groundscope import load_detector
from groundscope.models.captioner import look, best_queries, memory_levels
from groundscope.data.caption_clean import clean_region_phrase
import torch.nn.functional as F

split, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
root = Path(f"data/{split}")
recs = [json.loads(l) for l in open(root / "groundingcap.jsonl")][:n]
det = load_detector("nano")
torch.set_num_threads(2)
cats = sorted({r["category"] for rec in recs for r in rec["grounding"]["regions"]})
prompt = ". ".join(cats) + "."
rows = []
for rec in tqdm(recs):
    prep = det.prepare([str(root / rec["filename"])])[0]
    v = look(det, prep.pixel_values, prompt)
    maps = memory_levels(v.memory, v.memory_valid, v.spatial_shapes)[0]
    lv = [F.interpolate(maps[l][None].float(), size=(g, g), mode="bilinear", align_corners=False)[0].flatten(1).T
          for l, g in ((2, 8), (1, 12))]
    regs = rec["grounding"]["regions"]
    boxes = torch.tensor([r["bbox"] for r in regs], dtype=torch.float32)
    q = best_queries(v, boxes, prep.orig_size)
    rows.append(dict(p5=lv[0].half(), p4=lv[1].half(), qf=v.query_features[0, q].float().half(),
                     qb=v.boxes[0, q].float(), caption=rec["conversations"][1]["value"],
                     phrases=[clean_region_phrase(r["category"]) for r in regs],
                     cats=[r["category"] for r in regs]))
torch.save(dict(rows=rows, prompt=prompt), out)
