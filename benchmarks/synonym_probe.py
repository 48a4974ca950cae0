"""How far the nano's frozen text features place each test-only colour synonym from its colour.

    python benchmarks/synonym_probe.py [--model nano]

The detector reads a colour word only through its text backbone (MiniLM's first 3 layers, frozen in training).
For every colour, the features of ``"<word> <shape> ."`` (the word's pieces averaged, over the 8 shapes) are
compared, by cosine similarity, with those of each canonical colour word:

* the nearest canonical colour of each test synonym ("crimson" -> "red"?);
* a linear probe (logistic regression) trained on the canonical words, then on canonical words plus the
  training paraphrases (`groundscope.data.vocab.TRAIN_PARAPHRASES`), and tested on the synonyms: how well any
  head that sees only these features could name a synonym's colour.

No image is involved: this bounds what training the detector's image side can do for ``synonyms_AP50``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from groundscope.data.vocab import COLOUR_NAMES, SHAPES, TEST_SYNONYMS, TRAIN_PARAPHRASES
from groundscope.models.loading import load_detector


def word_features(detector, word: str) -> np.ndarray:
    """(8, D) unit features of `word` in front of each shape."""
    tok, text = detector.tokenizer, detector.model.model.text_backbone
    n = len(tok(word, add_special_tokens=False)["input_ids"])
    rows = []
    for shape in SHAPES:
        enc = tok(f"{word} {shape} .", return_tensors="pt")
        with torch.no_grad():
            h = text(**enc).last_hidden_state[0, 1:1 + n].mean(0)
        rows.append(torch.nn.functional.normalize(h, dim=0).numpy())
    return np.stack(rows)


def probe_accuracy(train: dict[str, list[np.ndarray]], test: dict[str, np.ndarray], l2: float = 1e-3) -> float:
    """Multinomial logistic regression (L2 `l2`, full-batch L-BFGS) on `train`, accuracy on `test`."""
    x = torch.as_tensor(np.concatenate([f for c in COLOUR_NAMES for f in train[c]]))
    y = torch.as_tensor(np.concatenate([[k] * sum(len(f) for f in train[c]) for k, c in enumerate(COLOUR_NAMES)]))
    head = torch.nn.Linear(x.shape[1], len(COLOUR_NAMES))
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + l2 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    xt = torch.as_tensor(np.concatenate([test[c] for c in COLOUR_NAMES]))
    yt = torch.arange(len(COLOUR_NAMES)).repeat_interleave(len(SHAPES))
    with torch.no_grad():
        return float((head(xt).argmax(1) == yt).float().mean())


def main() -> None:
    torch.manual_seed(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nano")
    args = ap.parse_args()
    det = load_detector(args.model, fast=False)
    canon = {c: word_features(det, c) for c in COLOUR_NAMES}
    centre = {c: canon[c].mean(0) / np.linalg.norm(canon[c].mean(0)) for c in COLOUR_NAMES}
    synonyms = {c: word_features(det, TEST_SYNONYMS[c]) for c in COLOUR_NAMES}
    print(f"{'colour':<8}{'synonym':<11}{'pieces':>7}{'cos to own':>12}  nearest canonical (cos)")
    right = 0
    for c in COLOUR_NAMES:
        mean = synonyms[c].mean(0)
        sims = {k: float(mean / np.linalg.norm(mean) @ v) for k, v in centre.items()}
        best = max(sims, key=sims.get)
        right += best == c
        pieces = len(det.tokenizer.tokenize(TEST_SYNONYMS[c]))
        print(f"{c:<8}{TEST_SYNONYMS[c]:<11}{pieces:>7}{sims[c]:>12.3f}  {best} ({sims[best]:.3f})")
    print(f"nearest canonical colour is the right one for {right}/{len(COLOUR_NAMES)} synonyms")
    paraphrases = {c: [word_features(det, w) for w in TRAIN_PARAPHRASES[c]] for c in COLOUR_NAMES}
    only = probe_accuracy({c: [canon[c]] for c in COLOUR_NAMES}, synonyms)
    both = probe_accuracy({c: [canon[c], *paraphrases[c]] for c in COLOUR_NAMES}, synonyms)
    print(f"linear probe on the synonyms: trained on the 8 canonical words {only:.3f}; "
          f"plus the 64 training paraphrases {both:.3f} (chance 0.125)")


if __name__ == "__main__":
    main()
