"""DAM diagnostics: linear probes of colour and shape on a base VLM's mean-pooled focal-crop features.

    python benchmarks/diagnostics/probe_vlm.py runs/base_vlm

Results: benchmarks/results/dam_synth.md.
"""
import torch, json, sys
from groundscope.data.regions import read_regions
from groundscope.describe.model import load_dam
m = load_dam(sys.argv[1], from_base_vlm=True).eval()
def feats(path, root, n):
    regs = read_regions(path, root).records[:n]
    X, C, S = [], [], []
    for i in range(0, len(regs), 32):
        ch = regs[i:i+32]
        px, _ = m.focal_inputs([str(r.image) for r in ch], [r.mask() for r in ch])
        with torch.inference_mode():
            f = m.base_vlm_features(px[:, 4:7])   # crop RGB -> (B, T, C)
        X.append(torch.cat([f.mean(1), f.reshape(f.shape[0], -1)[:, :0]], 1))
        for r in ch:
            c, s = r.category.split(" ", 1); C.append(c); S.append(s)
    return torch.cat(X), C, S
X, C, S = feats("data/synth_train/regions.json", "data/synth_train", 1500)
Xt, Ct, St = feats("data/synth_seed4/regions.json", "data/synth_seed4", 264)
for name, y, yt in (("colour", C, Ct), ("shape", S, St)):
    labels = sorted(set(y) | set(yt)); Y = torch.tensor([labels.index(v) for v in y]); Yt = torch.tensor([labels.index(v) for v in yt])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    W = torch.nn.Linear(X.shape[1], len(labels)); opt = torch.optim.Adam(W.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad(); torch.nn.functional.cross_entropy(W((X - mu) / sd), Y).backward(); opt.step()
    print(name, "test acc", round((W((Xt - mu) / sd).argmax(1) == Yt).float().mean().item(), 3))
