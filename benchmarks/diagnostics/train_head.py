"""LLMDet diagnostics, step 2: train caption-head variants on the cached views (see cache.py).

    python benchmarks/diagnostics/train_head.py --lm full --init small --steps 600
"""
import argparse, random, time, torch, math
from groundscope.models.captioner import CaptionHeadConfig, build_caption_head, grid_boxes, attach_lora
from groundscope.evaluate.captions import score_caption

ap = argparse.ArgumentParser()
ap.add_argument("--lm", default="frozen", choices=["frozen", "lora", "full"])
ap.add_argument("--init", default="default", choices=["default", "small"])
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--lm-lr", type=float, default=None)
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--bs", type=int, default=8)
ap.add_argument("--region-only", action="store_true")
ap.add_argument("--image-only", action="store_true")
ap.add_argument("--llm", default="runs/world_lm")
ap.add_argument("--gen", type=int, default=30)
a = ap.parse_args()
torch.manual_seed(0); random.seed(0)
torch.set_num_threads(2)
tr = torch.load("runs/capdiag/train.pt")["rows"]; te = torch.load("runs/capdiag/test.pt")["rows"]
d = tr[0]["p5"].shape[1]
cfg = CaptionHeadConfig(llm=a.llm, d_model=d, levels=[2, 1], grids=[8, 12], image_max_tokens=256,
                        lora={"r": 16, "alpha": 32} if a.lm == "lora" else None)
head = build_caption_head(cfg)
if a.lm == "full":
    head.lm.requires_grad_(True)
emb_rms = head.lm.get_input_embeddings().weight.pow(2).mean().sqrt().item()
if a.init == "small":
    for p in (head.projector, head.region_projector):
        last = p.mlp[2]
        torch.nn.init.normal_(last.weight, std=emb_rms / math.sqrt(last.in_features) * 2)
        torch.nn.init.zeros_(last.bias)
        torch.nn.init.normal_(p.pos_proj.weight, std=emb_rms / math.sqrt(p.pos_proj.in_features))
        torch.nn.init.zeros_(p.pos_proj.bias)
gb = [grid_boxes(8), grid_boxes(12)]

def img_tokens(rows):
    out = []
    for r in rows:
        out.append(torch.cat([head.projector(r["p5"].float(), gb[0]), head.separator[:1],
                              head.projector(r["p4"].float(), gb[1])], 0))
    return torch.stack(out)

def reg(rows):
    qf = torch.cat([r["qf"].float() for r in rows]); qb = torch.cat([r["qb"] for r in rows])
    return head.region_tokens(qf, qb), [p for r in rows for p in r["phrases"]]

head_params = [p for n, p in head.named_parameters() if p.requires_grad and not n.startswith("lm.")]
lm_params = [p for n, p in head.named_parameters() if p.requires_grad and n.startswith("lm.")]
opt = torch.optim.AdamW([{"params": head_params, "lr": a.lr},
                         {"params": lm_params, "lr": a.lm_lr or a.lr}], weight_decay=0.0)
with torch.no_grad():
    print(f"emb rms {emb_rms:.3f}, visual rms {img_tokens(tr[:2]).pow(2).mean().sqrt():.3f}")

def evaluate():
    head.eval()
    with torch.no_grad():
        li = head.image_loss(img_tokens(te[:16]), [r["caption"] for r in te[:16]]).item()
        t, p = reg(te[:16]); lr_ = head.region_loss(t, p).item()
    head.train()
    return li, lr_

t0 = time.time()
for step in range(1, a.steps + 1):
    batch = random.sample(tr, a.bs)
    lr_scale = min(1.0, step / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
    for g, base in zip(opt.param_groups, (a.lr, a.lm_lr or a.lr)):
        g["lr"] = base * lr_scale
    t, p = reg(batch)
    loss = head.region_loss(t, p) * (0.0 if a.image_only else 1.0)
    if not a.region_only:
        loss = loss + head.image_loss(img_tokens(batch), [r["caption"] for r in batch])
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(head_params + lm_params, 1.0); opt.step()
    if step % 50 == 0:
        print(f"step {step} train {loss.item():.3f} test image/region {evaluate()} {time.time()-t0:.0f}s", flush=True)

head.eval()
named = total = 0; ok = n = 0
with torch.no_grad():
    for r in te[:a.gen]:
        cap = head.generate(img_tokens([r]), cfg.image_prompt, 256)[0]
        s = score_caption(cap, r["cats"]); named += sum(s.named.values()); total += len(s.named)
        t, p = reg([r]); outs = head.generate(t, cfg.region_prompt, 10)
        ok += sum(o.strip().lower() == q.strip().lower() for o, q in zip(outs, p)); n += len(p)
print(f"RESULT lm={a.lm} init={a.init} lr={a.lr} objects named {named}/{total} = {named/max(total,1):.3f}; "
      f"region phrase exact {ok}/{n} = {ok/max(n,1):.3f}")
print("example:", cap[:300]); print("regions:", outs[:4], p[:4])
