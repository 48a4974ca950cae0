"""LLMDet diagnostics, step 3: can the stand-in LM learn to read the detector's memory at all? Teach it with
position questions first ("Describe the top left of the image." -> "a small red cross"), then captions.

    python benchmarks/diagnostics/qa_curriculum.py --qa-steps 600 --cap-steps 0                    # memory p5 + p4
    python benchmarks/diagnostics/qa_curriculum.py --qa-steps 2000 --cap-steps 0 --levels q --lm-lr 1e-3

--levels picks the visual tokens: p5 (8x8 cells), p4 (12x12 cells) of the cached encoder memory, or q: one token
per object, the matched query's feature and box through the region projector (an oracle: a linear probe reads
colour 0.96 / shape 0.90 from it). The whole LM trains. Needs runs/capdiag/{train,test}.pt from cache.py.
Results: benchmarks/results/llmdet_synth.md ("Can the stand-in LM learn to read by position").
"""
import argparse, json, math, random, time, torch
from groundscope.models.captioner import CaptionHeadConfig, build_caption_head, grid_boxes
from groundscope.evaluate.captions import score_caption
from groundscope.data.scene import region_words

ap = argparse.ArgumentParser()
ap.add_argument("--qa-steps", type=int, default=800)
ap.add_argument("--cap-steps", type=int, default=600)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--lm-lr", type=float, default=3e-4)
ap.add_argument("--bs", type=int, default=16)
ap.add_argument("--cap-bs", type=int, default=8)
ap.add_argument("--levels", default="p5,p4")
ap.add_argument("--gen", type=int, default=30)
ap.add_argument("--llm", default="runs/world_lm")
a = ap.parse_args()
torch.manual_seed(0); random.seed(0); torch.set_num_threads(2)
tr = torch.load("runs/capdiag/train.pt")["rows"]; te = torch.load("runs/capdiag/test.pt")["rows"]


def qa_items(rows, jsonl):
    recs = [json.loads(l) for l in open(jsonl)][: len(rows)]
    out = []
    for i, rec in enumerate(recs):
        by_region = {}
        for r in rec["grounding"]["regions"]:
            x0, y0, x1, y1 = r["bbox"]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            words = r["phrase"].split()
            size, colour, shape = words[0], words[-2], words[-1]
            class O: centre = (cx, cy)
            reg = region_words(O, rec["width"], rec["height"])
            by_region.setdefault(reg, []).append((cx, f"a {size} {colour} {shape}"))
        for reg, objs in by_region.items():
            objs.sort()
            names = [n for _, n in objs]
            ans = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            out.append((i, f"Describe the {reg} of the image.", ans))
    return out

qtr, qte = qa_items(tr, "data/synth_train/groundingcap.jsonl"), qa_items(te, "data/synth_test/groundingcap.jsonl")
print(f"{len(qtr)} train / {len(qte)} test questions; e.g. {qtr[0]}")
d = tr[0]["p5"].shape[1]
cfg = CaptionHeadConfig(llm=a.llm, d_model=d, levels=[2, 1], grids=[8, 12], image_max_tokens=256)
head = build_caption_head(cfg)
head.lm.requires_grad_(True)
emb_rms = head.lm.get_input_embeddings().weight.pow(2).mean().sqrt().item()
for p in (head.projector, head.region_projector):
    last = p.mlp[2]
    torch.nn.init.normal_(last.weight, std=emb_rms / math.sqrt(last.in_features) * 2); torch.nn.init.zeros_(last.bias)
    torch.nn.init.normal_(p.pos_proj.weight, std=emb_rms / math.sqrt(p.pos_proj.in_features)); torch.nn.init.zeros_(p.pos_proj.bias)
gb = [grid_boxes(8), grid_boxes(12)]
use = a.levels.split(",")

def img_tokens(rows):
    out = []
    for r in rows:
        parts = []
        if "q" in use: parts += [head.region_projector(r["qf"].float(), r["qb"].float())]
        if "p5" in use: parts += [head.projector(r["p5"].float(), gb[0])]
        if "p5" in use and "p4" in use: parts += [head.separator[:1]]
        if "p4" in use: parts += [head.projector(r["p4"].float(), gb[1])]
        out.append(torch.cat(parts, 0))
    n = max(o.shape[0] for o in out)
    return torch.stack([torch.cat([o, o.new_zeros(n - o.shape[0], o.shape[1])]) for o in out])

head_params = [p for n, p in head.named_parameters() if not n.startswith("lm.")]
lm_params = [p for n, p in head.named_parameters() if n.startswith("lm.")]
opt = torch.optim.AdamW([{"params": head_params, "lr": a.lr}, {"params": lm_params, "lr": a.lm_lr}], weight_decay=0.0)

def qa_loss(items, rows):
    # one LM call per distinct question (the prompt is part of the template)
    loss, n = 0.0, 0
    by_q = {}
    for i, q, ans in items:
        by_q.setdefault(q, []).append((i, ans))
    for q, lst in by_q.items():
        vis = img_tokens([rows[i] for i, _ in lst])
        loss = loss + head.lm_loss(vis, q, [ans for _, ans in lst], 40) * len(lst); n += len(lst)
    return loss / n

def qa_eval(k=120):
    head.eval(); ok = 0
    with torch.no_grad():
        for i, q, ans in qte[:k]:
            out = head.generate(img_tokens([te[i]]), q, 20)[0]
            ok += out.strip().rstrip(".").lower() == ans.lower()
    head.train(); return ok / k

def cap_eval():
    head.eval(); named = total = 0; cap = ""
    with torch.no_grad():
        for r in te[: a.gen]:
            cap = head.generate(img_tokens([r]), cfg.image_prompt, 256)[0]
            s = score_caption(cap, r["cats"]); named += sum(s.named.values()); total += len(s.named)
    head.train(); return named / max(total, 1), cap

def sched(step, total):
    return min(1.0, step / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))

t0 = time.time()
for step in range(1, a.qa_steps + 1):
    for g, base in zip(opt.param_groups, (a.lr, a.lm_lr)): g["lr"] = base * sched(step, a.qa_steps)
    loss = qa_loss(random.sample(qtr, a.bs), tr)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(head_params + lm_params, 1.0); opt.step()
    if step % 100 == 0:
        print(f"qa step {step} loss {loss.item():.3f} test QA exact {qa_eval():.3f} {time.time()-t0:.0f}s", flush=True)
for step in range(1, a.cap_steps + 1):
    for g, base in zip(opt.param_groups, (a.lr, a.lm_lr)): g["lr"] = base * sched(step, a.cap_steps)
    batch = random.sample(tr, a.cap_bs)
    loss = head.image_loss(img_tokens(batch), [r["caption"] for r in batch]) + qa_loss(random.sample(qtr, a.bs), tr)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(head_params + lm_params, 1.0); opt.step()
    if step % 100 == 0:
        print(f"cap step {step} loss {loss.item():.3f} {time.time()-t0:.0f}s", flush=True)
if a.cap_steps:
    rate, cap = cap_eval()
    print(f"RESULT QA exact {qa_eval():.3f}; objects named in captions {rate:.3f}\nexample: {cap[:400]}")
else:
    print(f"RESULT QA exact {qa_eval():.3f}")
