"""RKD: the three losses against hand-computed values, the head (weight transfer, inference rule), the region
cache (reused on a rerun), and training through `groundscope train` with ``rkd.enabled`` end to end on a tiny
detector and a tiny CLIP teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from groundscope.models.rkd_head import RkdHead, RkdHeadConfig, combine_scores, rescore_logits
from groundscope.train.config import ConfigError, config_from_dict
from groundscope.train.rkd_loss import pseudo_max_score_loss, relation_matrix, rkd_irm_loss, rkd_l1_loss

from conftest import TINY_NANO as TINY
from conftest import tokenizer_dir


# Three regions in 2-D: the student's point along x, y and the diagonal; the teacher's along x, x and y.
STUDENT = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
TEACHER = torch.tensor([[5.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
R = 1 / math.sqrt(2)


def test_l1_loss_hand_value():
    # normalised: s = (1,0), (0,1), (r,r); t = (1,0), (1,0), (0,1)
    # |s - t| = (0,0), (1,1), (r, 1-r): sum = 2 + r + 1 - r = 3 over 6 entries -> 0.5, x100
    assert rkd_l1_loss(STUDENT, TEACHER).item() == pytest.approx(50.0, abs=1e-4)
    assert rkd_l1_loss(STUDENT[:0], TEACHER[:0]).item() == 0.0


def test_irm_loss_hand_value():
    # student Gram of normalised rows: [[1,0,r],[0,1,r],[r,r,1]]; rows / their norms sqrt(3/2), sqrt(3/2), sqrt(2)
    a, b = math.sqrt(2 / 3), R * math.sqrt(2 / 3)
    gs = torch.tensor([[a, 0, b], [0, a, b], [0.5, 0.5, R]])
    # teacher Gram [[1,1,0],[1,1,0],[0,0,1]]; rows / sqrt(2), sqrt(2), 1
    gt = torch.tensor([[R, R, 0], [R, R, 0], [0, 0, 1.0]])
    assert torch.allclose(relation_matrix(STUDENT), gs, atol=1e-6)
    assert torch.allclose(relation_matrix(TEACHER), gt, atol=1e-6)
    # squared Frobenius norm of the difference SUMMED over the 9 entries (the reference's torch.norm(.) ** 2), x100
    expected = 100 * (2 * ((a - R) ** 2 + R**2 + b**2) + (2 * 0.25 + (R - 1) ** 2))
    assert rkd_irm_loss(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(227.639, abs=0.001)  # the old per-entry mean gave 25.293 (9x weaker)
    # The same embeddings scaled give the same loss (both sides are normalised); one region has no relations.
    assert rkd_irm_loss(3 * STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-5)
    assert rkd_irm_loss(STUDENT[:1], TEACHER[:1]).item() == 0.0


def test_pseudo_max_score_loss_hand_case():
    logits = torch.tensor([[2.0, -1.0, 0.0, 5.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    classes = torch.tensor([[0, 1, 2, -1]])  # three one-token classes; the last column is padding: not counted
    # summed over the classes, as the reference's reduction='sum' over its classes (was the mean: / 3)
    expected = math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log(2)
    assert pseudo_max_score_loss(logits, target, classes).item() == pytest.approx(expected, rel=1e-6)
    assert pseudo_max_score_loss(logits[:, :3], target[:, :3]).item() == pytest.approx(expected, rel=1e-6)
    # two pseudo-boxes of one image: the mean of their per-box losses (the reference's loss_i / len(labels))
    two = pseudo_max_score_loss(torch.cat([logits, -logits]), torch.cat([target, target]), torch.cat([classes, classes]))
    other = math.log1p(math.exp(2)) + math.log1p(math.exp(1)) + math.log(2)
    assert two.item() == pytest.approx((expected + other) / 2, rel=1e-6)
    assert pseudo_max_score_loss(logits[:0], target[:0]).item() == 0.0


def test_pseudo_max_score_loss_counts_a_class_once_whatever_its_tokens():
    """Token logits: a class of two tokens enters the sum once (the mean of its tokens' BCE), separators and
    padding not at all, so the sum runs over the classes as the reference's over its C + 1 columns."""
    sp = lambda x: math.log1p(math.exp(x))  # BCE-with-logits: target 1 -> sp(-x), target 0 -> sp(x)
    # tokens: [CLS] red circle . cat . [SEP] pad; classes "red circle" (label) and "cat"
    logits = torch.tensor([[0.3, 2.0, 1.0, -0.7, -1.0, 0.4, 0.9, -float("inf")]])
    target = torch.tensor([[0.0, 1, 1, 0, 0, 0, 0, 0]])
    classes = torch.tensor([[-1, 0, 0, -1, 1, -1, -1, -1]])
    expected = (sp(-2.0) + sp(-1.0)) / 2 + sp(-1.0)
    got = pseudo_max_score_loss(logits, target, classes)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the old reduction summed over every real token: the class of two tokens twice, the separators too
    old = sp(-2.0) + sp(-1.0) + sp(-1.0) + sp(0.3) + sp(-0.7) + sp(0.4) + sp(0.9)
    assert abs(got.item() - old) > 1.0
    # the -inf padding does not poison the gradient
    x = logits.clone().requires_grad_(True)
    pseudo_max_score_loss(x, target, classes).backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, [0, 3, 5, 6, 7]].abs().sum() == 0
    with pytest.raises(ValueError, match="column_class"):
        pseudo_max_score_loss(logits, target, classes[:, :4])


def test_trainer_token_classes_follow_the_prompt():
    from groundscope.prompts import chunk_classes
    from groundscope.train.rkd import RkdTrainer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    prompt = chunk_classes(tok, ["red circle", "cat"], 256)[0]
    n = prompt.num_tokens
    mask = torch.zeros(n + 2, dtype=torch.bool)
    mask[:n] = True
    classes = RkdTrainer._token_classes(prompt, mask, 12 + n)
    assert classes.shape == (12 + n,)
    for c, toks in enumerate(prompt.token_spans):
        assert toks and (classes[toks] == c).all()
    inside = {t for toks in prompt.token_spans for t in toks}
    assert all(int(classes[t]) == -1 for t in range(12 + n) if t not in inside)  # specials, " . ", padding
    onehot = RkdTrainer._token_onehot(prompt, 0, 12 + n, "cpu")
    assert onehot.sum() == len(prompt.token_spans[0]) and (onehot[prompt.token_spans[0]] == 1).all()
    # a token outside the text mask is counted nowhere
    mask[prompt.token_spans[1][0]] = False
    assert RkdTrainer._token_classes(prompt, mask, 12 + n)[prompt.token_spans[1][0]] == -1


def test_pseudo_max_score_loss_is_the_reference_reduction_over_images():
    """Per image the mean over its labels' pseudo-boxes, then the mean over images (custom_fast_rcnn.py
    ~L270-295), each box's BCE summed over the classes (~L350-351)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    labels = torch.tensor([1, 4, 0, 6, 2])
    targets = F.one_hot(labels, 7).float()
    image = torch.tensor([0, 0, 2, 2, 2])  # image 0 holds 2 labels, image 2 three

    def reference(score, label):  # _psuedo_maxscore_loss: BCE(reduction='sum') against a one-hot target
        t = score.new_zeros(score.shape[0])
        t[label] = 1.0
        return F.binary_cross_entropy_with_logits(score, t, reduction="sum")

    per_image = [[0, 1], [2, 3, 4]]
    expected = sum(sum(reference(logits[i], labels[i]) / len(ix) for i in ix) for ix in per_image) / len(per_image)
    got = pseudo_max_score_loss(logits, targets, image_index=image)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # not the mean over all five boxes (images with more labels would weigh more)
    flat = sum(reference(logits[i], labels[i]) for i in range(5)) / 5
    assert abs(got.item() - flat.item()) > 1e-3
    with pytest.raises(ValueError, match="image_index"):
        pseudo_max_score_loss(logits, targets, image_index=image[:3])


def _reference_distil_losses(student, teacher):
    """custom_fast_rcnn.py ~L168-180 with weights 1, on res5_roi_heads.py ~L49-51's normalised embeddings."""
    import torch.nn.functional as F

    s, t = F.normalize(student, p=2, dim=1), F.normalize(teacher, p=2, dim=1)
    l1 = F.l1_loss(s, t, reduction="mean") * 100
    g_s, g_t = F.normalize(s @ s.t(), dim=1), F.normalize(t @ t.t(), dim=1)
    return l1, torch.norm(g_s - g_t) ** 2 * 100


def test_distillation_losses_equal_the_reference_at_batch_size():
    torch.manual_seed(1)
    for n in (2, 10, 40):  # the reference's 2 and 8 images per GPU x 5 regions
        s, t = torch.randn(n, 16), torch.randn(n, 16)
        l1, irm = _reference_distil_losses(s, t)
        assert rkd_l1_loss(s, t).item() == pytest.approx(l1.item(), rel=1e-5)
        assert rkd_irm_loss(s, t).item() == pytest.approx(irm.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        rkd_irm_loss(torch.randn(3, 4), torch.randn(3, 5))


def _reference_transfer_embedding(head, x):
    """WeightTransferZeroShotClassifier.forward up to the normalisation (zero_shot_classifier.py ~L166-173),
    written from the reference's own layers: fc1/fc2 on linear.weight, fc3/fc4 residual, LeakyReLU(0.1)."""
    wt, relu = head.transfer, torch.nn.LeakyReLU(0.1)
    transfer_weights = wt.fc2(relu(wt.fc1(head.proj.weight)))
    res_x = wt.fc4(relu(wt.fc3(x)))
    return res_x + torch.nn.functional.linear(x, weight=transfer_weights)


def test_weight_transfer_is_the_reference_form():
    head = RkdHead(RkdHeadConfig(d_model=8, teacher_dim=6, weight_transfer=True))
    wt = head.transfer
    # shapes: fc1 d -> D and fc2 D -> d on W's rows, fc3 d -> 1024 and fc4 1024 -> D (the old MLP was d -> d -> d)
    assert (wt.fc1.in_features, wt.fc1.out_features, wt.fc2.in_features, wt.fc2.out_features) == (8, 6, 6, 8)
    assert (wt.fc3.in_features, wt.fc3.out_features, wt.fc4.in_features, wt.fc4.out_features) == (8, 1024, 1024, 6)
    assert wt.transfer_weight(head.proj.weight).shape == head.proj.weight.shape  # T is (D, d) like W
    torch.manual_seed(0)
    h, text = torch.randn(2, 5, 8), torch.randn(3, 6)
    x = h.reshape(10, 8)
    ref = _reference_transfer_embedding(head, x)
    assert torch.allclose(wt(x, head.proj.weight), ref, atol=1e-5)
    # the classifier: scale * cos(embedding, text) + bias
    cos = torch.nn.functional.normalize(ref, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    expected = head.transfer_scale.exp() * cos + head.transfer_bias
    assert torch.allclose(head.transfer_logits(h, text).reshape(10, 3), expected, atol=1e-5)
    # it replaces the RKD classifier (no averaging of the two)
    assert torch.allclose(head.probabilities(h, text), head.transfer_logits(h, text).sigmoid(), atol=1e-6)
    assert torch.allclose(head.class_logits(h, text), head.transfer_logits(h, text))
    head.transfer_logits(h, text).sum().backward()
    assert head.proj.weight.grad is None  # W gets no gradient through the transfer head
    assert all(getattr(wt, n).weight.grad.abs().sum() > 0 for n in ("fc1", "fc2", "fc3", "fc4"))
    plain = RkdHead(RkdHeadConfig(d_model=8, teacher_dim=6))
    assert torch.allclose(plain.probabilities(h, text), plain.logits(h, text).sigmoid())
    with pytest.raises(RuntimeError, match="without weight transfer"):
        plain.transfer_logits(h, text)


def test_head_saves_and_loads(tmp_path):
    head = RkdHead(RkdHeadConfig(d_model=8, teacher_dim=6, weight_transfer=True, score_weight=0.3, teacher="x/y"))
    head.save(tmp_path / "h")
    back = RkdHead.load(tmp_path / "h")
    assert back.config == head.config
    h, text = torch.randn(4, 8), torch.randn(3, 6)
    assert torch.allclose(back.probabilities(h, text), head.probabilities(h, text), atol=1e-6)
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="not an RKD head folder"):
        RkdHead.load(tmp_path / "bad")


def test_heads_saved_by_the_old_code(tmp_path):
    """A weight-transfer head of the old d -> d -> d MLP is refused with 'retrain'; a plain one still loads."""
    from safetensors.torch import save_file

    old_cfg = {"d_model": 8, "teacher_dim": 6, "weight_transfer": True, "score_weight": 0.5, "teacher": "t",
               "text_template": "{}"}
    old_state = {"proj.weight": torch.randn(6, 8), "proj.bias": torch.randn(6), "logit_scale": torch.tensor(2.3),
                 "bias": torch.tensor(-5.0), "transfer.fc1.weight": torch.randn(8, 8), "transfer.fc1.bias": torch.randn(8),
                 "transfer.fc2.weight": torch.randn(8, 8), "transfer.fc2.bias": torch.randn(8),
                 "transfer_scale": torch.tensor(2.3), "transfer_bias": torch.tensor(-5.0)}
    for name, cfg, state in (("wt", old_cfg, old_state),
                             ("plain", {**old_cfg, "weight_transfer": False},
                              {k: v for k, v in old_state.items() if not k.startswith("transfer")})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        save_file(state, str(tmp_path / name / "head.safetensors"))
    with pytest.raises(ValueError, match="retrain it"):
        RkdHead.load(tmp_path / "wt")
    plain = RkdHead.load(tmp_path / "plain")
    assert plain.config.text_template == "{}"  # an old head keeps the template it was trained with
    assert torch.equal(plain.proj.weight, old_state["proj.weight"])


def test_inference_rule_is_the_weighted_geometric_mean_in_the_token_logits():
    from groundscope.postprocess import entity_scores
    from groundscope.prompts import chunk_classes
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    prompt = chunk_classes(tok, ["red circle", "cat"], 256)[0]
    torch.manual_seed(0)
    logits = torch.full((4, 256), -float("inf"))
    logits[:, : prompt.num_tokens] = torch.randn(4, prompt.num_tokens)
    g = entity_scores(logits, prompt)
    c = torch.rand(4, 2)
    new = rescore_logits(logits, prompt.token_spans, g, c, 0.25)
    expected = g**0.75 * c**0.25
    assert torch.allclose(combine_scores(g, c, 0.25), expected, atol=1e-6)
    assert torch.allclose(entity_scores(new, prompt), expected, atol=1e-5)
    assert torch.allclose(entity_scores(new, prompt, "max"), expected, atol=1e-5)
    # tokens outside the classes (special tokens, the " . " separators) are left as they were
    outside = [t for t in range(prompt.num_tokens) if not any(t in s for s in prompt.token_spans)]
    assert torch.equal(new[:, outside], logits[:, outside])


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from groundscope.data import generate_world

    out = tmp_path_factory.mktemp("ovd_world")
    generate_world(out, 4, seed=0, split="test")  # novel objects appear, unannotated in coco_base.json
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from groundscope.train.nano import build_nano

    return build_nano(tmp_path_factory.mktemp("tiny"), **TINY)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    from groundscope.distill.synth_teacher import build_clip

    model, proc, tok = build_clip(tokenizer_dir(), image_size=32, patch=8, width=32, layers=1, dim=16)
    out = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_teacher_embeds_crops_and_names(teacher_dir, world):
    from PIL import Image

    from groundscope.models.teacher import Teacher, crop_regions

    t = Teacher(teacher_dir)
    img = Image.open(world / "images" / "000000.png")
    crops = crop_regions(img, np.array([[10, 10, 50, 40], [0, 0, 1, 1], [300, 300, 900, 900]], dtype=float))
    assert [c.size for c in crops][:1] == [(40, 30)]
    assert all(c.size[0] >= 1 and c.size[1] >= 1 for c in crops)  # degenerate and outside boxes still crop
    emb = t.embed_images(crops)
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    names = t.embed_texts(["red circle", "blue star"])
    assert names.shape == (2, 16) and not torch.allclose(names[0], names[1])
    from groundscope.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="cannot load the teacher"):
        Teacher(world)  # a folder that is not a model


def test_detect_each_equals_one_detect_per_class(tiny_dir, world):
    from groundscope.models.loading import load_detector

    det = load_detector(tiny_dir)
    image = world / "images" / "000001.png"
    each = det.detect_each(image, ["red circle", "blue star", "green heart"], max_detections=7)
    for k, name in enumerate(["red circle", "blue star", "green heart"]):
        one = det.detect(image, [name], max_detections=7)
        assert np.allclose(each[k].xyxy, one.xyxy, atol=1e-4) and np.allclose(each[k].scores, one.scores, atol=1e-6)
        assert (each[k].class_ids == k).all() and each[k].labels == one.labels


def test_region_cache_is_reused_on_a_rerun(tiny_dir, teacher_dir, world, tmp_path, monkeypatch):
    from groundscope.distill import regions as R
    from groundscope.models.teacher import Teacher
    from groundscope.models.loading import load_detector

    det = load_detector(tiny_dir)
    teacher = Teacher(teacher_dir)
    names = [im["file_name"] for im in json.loads((world / "coco_base.json").read_text())["images"]]
    labels = R.read_image_labels(world / "coco_all.json")
    settings = R.RegionSettings(teacher=str(teacher_dir), detector=str(tiny_dir), k=3, proposal_prompts=["circle", "star"],
                                proposal_top=10, pseudo_template="{}", pseudo_threshold=0.0)
    first = R.embed_regions(det, teacher, names[:2], world, tmp_path / "cache", settings, labels)
    assert first == {"embedded": 2, "reused": 0, "failed": {}}
    cache = R.RegionCache(tmp_path / "cache")
    reg = cache.get(names[0])
    assert reg.boxes.shape == (3, 4) and reg.embeddings.shape == (3, 16)
    assert reg.labels == labels[names[0]] and len(reg.pseudo_labels) == len(reg.labels)  # threshold 0: all boxed
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache" / "regions").iterdir()}

    calls = []
    real = teacher.embed_images
    monkeypatch.setattr(teacher, "embed_images", lambda crops: calls.append(len(crops)) or real(crops))
    again = R.embed_regions(det, teacher, names, world, tmp_path / "cache", settings, labels)
    assert again["reused"] == 2 and again["embedded"] == len(names) - 2
    assert len(calls) == len(names) - 2  # the two cached images were not embedded again
    for name, data in before.items():
        assert (tmp_path / "cache" / "regions" / name).read_bytes() == data
    # other settings into the same folder are refused, naming what changed
    with pytest.raises(R.RegionCacheError, match="k: 3 -> 4"):
        R.embed_regions(det, teacher, names, world, tmp_path / "cache", R.RegionSettings(**{**settings.__dict__, "k": 4}))
    assert cache.get("nope.png") is None


def test_image_labels_from_coco_and_jsonl(world, tmp_path):
    from groundscope.distill.regions import RegionCacheError, read_image_labels

    coco = json.loads((world / "coco_all.json").read_text())
    labels = read_image_labels(world / "coco_all.json")
    first = coco["images"][0]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert labels[first["file_name"]] == sorted({names[a["category_id"]] for a in coco["annotations"]
                                                  if a["image_id"] == first["id"]})
    (tmp_path / "l.jsonl").write_text('{"file_name": "a.png", "labels": ["cat", "dog"]}\n')
    assert read_image_labels(tmp_path / "l.jsonl") == {"a.png": ["cat", "dog"]}
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(RegionCacheError, match="not an image-label file"):
        read_image_labels(tmp_path / "bad.json")


def _rkd_config(tiny_dir, world, teacher_dir, out, **rkd) -> dict:
    return {
        "model": {"path": str(tiny_dir), "device": "cpu"},
        "data": {"train": {"path": str(world / "coco_base.json")}, "flip_prob": 0.5, "num_negatives": 3},
        "train": {"max_steps": 2, "batch_size": 2, "out_dir": str(out), "progress": False, "checkpoint_every": 1},
        "schedule": {"kind": "constant"},
        "rkd": {"enabled": True, "teacher": str(teacher_dir), "regions": str(out.parent / "regions"), "k": 3,
                "proposal_prompts": ["circle", "star"], "proposal_top": 10, "image_labels": str(world / "coco_all.json"),
                "pseudo_template": "{}", "pseudo_threshold": 0.0, **rkd},
    }


def test_rkd_training_end_to_end(tiny_dir, world, teacher_dir, tmp_path, monkeypatch):
    from groundscope.models.loading import load_detector
    from groundscope.train import rkd as rkd_module
    from groundscope.train.trainers import build_trainer
    from groundscope.train.rkd import RkdTrainer

    # A random tiny detector's boxes seldom fit a pseudo-box (GIoU >= 0.5); any fit lets the loss run here.
    monkeypatch.setattr(rkd_module, "PSEUDO_MIN_GIOU", -1.0)

    # stage 1 (the reference's RKD + PIS run): W trains; stage 2 below (weight transfer) starts from its model
    cfg = config_from_dict(_rkd_config(tiny_dir, world, teacher_dir, tmp_path / "run", pseudo=True,
                                       score_weight=0.5))
    trainer = build_trainer(cfg)
    assert isinstance(trainer, RkdTrainer)
    assert any(n.startswith("rkd.proj") for g in trainer.groups for n in g["names"])
    summary = trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    assert len(train) == 2
    for key in ("rkd.l1", "rkd.irm", "rkd.head", "rkd.pms"):
        assert all(math.isfinite(r[key]) for r in train), key
    assert all(r["rkd.l1"] > 0 and r["rkd.irm"] > 0 for r in train)
    assert any(r.get("rkd.pseudo_boxes", 0) > 0 for r in train)
    # the exported model carries its head and teacher; load_detector combines the scores
    model_dir = Path(summary["model_dir"])
    assert (model_dir / "rkd_head" / "head.safetensors").exists() and (model_dir / "rkd_head" / "teacher").is_dir()
    det = load_detector(model_dir)
    assert det.rkd is not None and det.rkd.head.transfer is None
    image = world / "images" / "000000.png"
    with_head = det.detect(image, ["red circle", "blue star"], max_detections=5)
    rkd, det.rkd = det.rkd, None
    without = det.detect(image, ["red circle", "blue star"], max_detections=5)
    det.rkd = rkd
    assert len(with_head) == 5 and not np.allclose(with_head.scores, without.scores)
    # grounding keeps the grounding scores
    g1 = det.ground(image, "a red circle", ["a red circle"])
    det.rkd = None
    g2 = det.ground(image, "a red circle", ["a red circle"])
    assert np.allclose(g1.scores, g2.scores)
    # the region cache was built by the trainer and a resume reads the head back
    assert (tmp_path / "regions" / "manifest.json").exists()
    resumed = build_trainer(cfg)
    resumed.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for a, b in zip(resumed.rkd_head.state_dict().values(), trainer.rkd_head.state_dict().values()):
        assert torch.equal(a, b)

    # stage 2: weight transfer from stage 1's model: its W is loaded and stays frozen for every loss (official
    # zero_shot_classifier.py ~L115-116); the transfer classifier replaces the RKD classifier
    w1 = rkd.head.proj.weight.detach().clone()  # the exported head (det.rkd was set to None above)
    cfg2 = _rkd_config(model_dir, world, teacher_dir, tmp_path / "run2", pseudo=True, weight_transfer=True)
    cfg2["train"]["max_steps"] = 1
    stage2 = build_trainer(config_from_dict(cfg2))
    assert stage2.w_frozen and torch.equal(stage2.rkd_head.proj.weight.detach().cpu(), w1)
    names = {n for g in stage2.groups for n in g["names"]}
    assert not any(n.startswith("rkd.proj") for n in names) and any(n.startswith("rkd.transfer.fc3") for n in names)
    stage2.fit()
    assert torch.equal(stage2.rkd_head.proj.weight.detach().cpu(), w1)
    row = [json.loads(x) for x in (tmp_path / "run2" / "log.jsonl").read_text().splitlines()
           if json.loads(x)["type"] == "train"][-1]
    assert "rkd.transfer" in row and "rkd.head" not in row and row["rkd.l1"] > 0


def test_image_labels_enter_the_prompt_without_boxes(tiny_dir, world, teacher_dir, tmp_path):
    from groundscope.train.trainers import build_trainer

    cfg = config_from_dict(_rkd_config(tiny_dir, world, teacher_dir, tmp_path / "run", pseudo=True))
    trainer = build_trainer(cfg)
    labels = json.loads((world / "coco_all.json").read_text())
    novel = {c["name"] for c in labels["categories"] if c["id"] > 56}
    seen = False
    for i in range(len(trainer.dataset)):
        sample = trainer.dataset[i]
        rec = trainer._record(i)
        in_prompt = set(sample.prompt.labels) & novel & set(trainer._image_regions(rec.filename).labels)
        boxed = {sample.prompt.labels[int(e)] for e in sample.target.entity}
        assert not (in_prompt & boxed)  # image-level novel labels are in the prompt but never boxed
        seen |= bool(in_prompt)
    assert seen


def test_rkd_config_errors(tmp_path):
    base = {"model": {"path": "nano"}, "data": {"train": {"path": "x.json"}}, "train": {"max_steps": 2}}
    with pytest.raises(ConfigError, match="rkd.regions"):
        config_from_dict({**base, "rkd": {"enabled": True, "teacher": "t"}})
    with pytest.raises(ConfigError, match="rkd.teacher"):
        config_from_dict({**base, "rkd": {"enabled": True, "regions": str(tmp_path / "none")}})
    with pytest.raises(ConfigError, match="pseudo-labels need rkd.image_labels"):
        config_from_dict({**base, "rkd": {"enabled": True, "teacher": "t", "regions": str(tmp_path / "r"), "pseudo": True}})
    with pytest.raises(ConfigError, match="must contain"):
        config_from_dict({**base, "rkd": {"enabled": True, "teacher": "t", "regions": str(tmp_path / "r"),
                                          "pseudo_template": "every"}})
    # a config without rkd keeps its old config.yaml (no rkd section written)
    assert "rkd" not in config_from_dict(base).to_dict()
