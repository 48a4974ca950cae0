"""LLMDet diagnostics: linear probes of colour and shape on the cached nano memory cells and query features.

    python benchmarks/diagnostics/probe.py
"""
import torch, json
d = torch.load("runs/capdiag/train.pt")["rows"]; t = torch.load("runs/capdiag/test.pt")["rows"]
def feats(rows, key, side):
    X, C, S = [], [], []
    for r in rows:
        for b, cat in zip(r["qb"], r["cats"]):  # qb: predicted box of the best query ~ object box (cxcywh norm)
            cx, cy = float(b[0]), float(b[1])
            i, j = min(int(cy * side), side - 1), min(int(cx * side), side - 1)
            X.append(r[key][i * side + j].float()); c, s = cat.split(" ", 1); C.append(c); S.append(s)
    return torch.stack(X), C, S
for key, side in (("p4", 12), ("p5", 8)):
    X, C, S = feats(d, key, side); Xt, Ct, St = feats(t, key, side)
    for name, y, yt in (("colour", C, Ct), ("shape", S, St)):
        labels = sorted(set(y)); Y = torch.tensor([labels.index(v) for v in y]); Yt = torch.tensor([labels.index(v) if v in labels else -1 for v in yt])
        mu, sd = X.mean(0), X.std(0) + 1e-6
        W = torch.nn.Linear(X.shape[1], len(labels)); opt = torch.optim.Adam(W.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad(); l = torch.nn.functional.cross_entropy(W((X - mu) / sd), Y); l.backward(); opt.step()
        acc = (W((Xt - mu) / sd).argmax(1) == Yt).float().mean().item()
        print(key, name, f"test acc {acc:.3f}  chance {max(y.count(v) for v in labels)/len(y):.3f}")
X, C, S = [], [], []
for rows, out in ((d, 0), (t, 1)):
    pass
q = torch.cat([r["qf"].float() for r in d]); cats = [c for r in d for c in r["cats"]]
qt = torch.cat([r["qf"].float() for r in t]); catt = [c for r in t for c in r["cats"]]
for name, f in (("colour", lambda c: c.split(" ")[0]), ("shape", lambda c: c.split(" ", 1)[1])):
    y = [f(c) for c in cats]; labels = sorted(set(y)); Y = torch.tensor([labels.index(v) for v in y])
    Yt = torch.tensor([labels.index(f(c)) if f(c) in labels else -1 for c in catt])
    mu, sd = q.mean(0), q.std(0) + 1e-6
    W = torch.nn.Linear(q.shape[1], len(labels)); opt = torch.optim.Adam(W.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad(); l = torch.nn.functional.cross_entropy(W((q - mu) / sd), Y); l.backward(); opt.step()
    print("query", name, f"test acc {(W((qt - mu) / sd).argmax(1) == Yt).float().mean().item():.3f}")
