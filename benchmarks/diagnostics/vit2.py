"""DAM diagnostics: can a from-scratch SigLIP tower learn colour and shape from focal crops with direct labels?

    python benchmarks/diagnostics/vit2.py PATCH HIDDEN LAYERS LR STEPS [mean|centre]

Results: benchmarks/results/dam_synth.md.
"""
import torch, time, sys, random, os
from transformers import SiglipVisionConfig, SiglipVisionModel
torch.manual_seed(0)
patch, hidden, layers, lr, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
pool = sys.argv[6] if len(sys.argv) > 6 else "mean"
cache = "runs/capdiag/crops.pt"
if not os.path.exists(cache):
    from groundscope.data.regions import read_regions
    from groundscope.describe.model import load_dam
    m = load_dam("runs/base_vlm", from_base_vlm=True)
    def crops(path, root, n):
        regs = read_regions(path, root).records[:n]
        P, C, S = [], [], []
        for i in range(0, len(regs), 64):
            ch = regs[i:i+64]
            px, _ = m.focal_inputs([str(r.image) for r in ch], [r.mask() for r in ch])
            P.append(px[:, 4:8].half())
            for r in ch:
                c, s = r.category.split(" ", 1); C.append(c); S.append(s)
        return torch.cat(P), C, S
    torch.save((crops("data/synth_train/regions.json", "data/synth_train", 8000), crops("data/synth_seed4/regions.json", "data/synth_seed4", 264)), cache)
(X, C, S), (Xt, Ct, St) = torch.load(cache)
cols = sorted(set(C) | set(Ct)); shps = sorted(set(S) | set(St))
yc = torch.tensor([cols.index(v) for v in C]); ys = torch.tensor([shps.index(v) for v in S])
yct = torch.tensor([cols.index(v) for v in Ct]); yst = torch.tensor([shps.index(v) for v in St])
vis = SiglipVisionModel(SiglipVisionConfig(image_size=128, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=hidden * 4, vision_use_head=False))
head = torch.nn.Linear(hidden, len(cols) + len(shps))
opt = torch.optim.AdamW(list(vis.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
def fwd(px):
    h = vis(pixel_values=px[:, :3].float()).last_hidden_state
    if pool == "centre":
        g = int(h.shape[1] ** 0.5); hh = h.reshape(h.shape[0], g, g, -1)[:, g // 3: 2 * g // 3 + 1, g // 3: 2 * g // 3 + 1]
        return head(hh.mean((1, 2)))
    return head(h.mean(1))
t0 = time.time()
for step in range(1, steps + 1):
    for g in opt.param_groups: g["lr"] = lr * min(1, step / 50)
    idx = torch.randint(0, len(X), (64,))
    out = fwd(X[idx])
    loss = torch.nn.functional.cross_entropy(out[:, :len(cols)], yc[idx]) + torch.nn.functional.cross_entropy(out[:, len(cols):], ys[idx])
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(vis.parameters(), 1.0); opt.step()
    if step % 100 == 0:
        with torch.no_grad():
            o = fwd(Xt)
        print(sys.argv[1:], step, f"loss {loss.item():.3f} colour {(o[:, :len(cols)].argmax(1)==yct).float().mean():.3f} shape {(o[:, len(cols):].argmax(1)==yst).float().mean():.3f} {time.time()-t0:.0f}s", flush=True)
