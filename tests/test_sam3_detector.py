"""SAM 3 as a detector (groundscope.models.sam3_detector) on a tiny random `Sam3Model` with a real CLIP BPE
tokenizer: the post-processing equals transformers' `Sam3ImageProcessor.post_process_instance_segmentation`
(imported with a stand-in for the torchvision import it never uses there) and the formula it cites; detect equals
transformers' own processor-equivalent + `Sam3Model` forward + post-processing path per class; each image is
encoded once for all its classes; batching does not change results; ground / refer / caption behave as
documented; `load_detector` takes "sam3", a SAM 3 registry entry and sam3 / sam3_video folders."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

SIZE = 112


def _clip_tokenizer(folder: Path):
    """A real CLIPTokenizer (byte-level BPE, CLIP's file layout) from a vocab written here: the byte characters,
    the same with </w>, a few merged words, then the special tokens."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
    vocab = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_sam3_config(vocab_size: int, bos: int, eos: int, pad: int):
    from transformers import Sam3Config
    from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig, Sam3VisionConfig

    vit = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=SIZE, patch_size=14, window_size=4, global_attn_indexes=[1], pretrain_image_size=56)
    vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=16,
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], scale_factors=[4.0, 2.0, 1.0])
    h = 16
    cfg = Sam3Config(
        vision_config=vision,
        text_config=dict(model_type="clip_text_model", vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         projection_dim=16, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
        geometry_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=32),
        detr_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=32),
        detr_decoder_config=dict(hidden_size=h, num_layers=2, num_queries=20, num_attention_heads=2,
                                 intermediate_size=32),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2))
    # Weights drawn wider than transformers' 0.02 so the random model's scores depend on the image and the text
    # (at 0.02 every query scores ~0.25 everywhere) and its mask probabilities are rarely near 0.5.
    for c in (cfg, vision, vit, cfg.text_config, cfg.geometry_encoder_config, cfg.detr_encoder_config,
              cfg.detr_decoder_config, cfg.mask_decoder_config):
        c.initializer_range = 0.3
    return cfg


def build_tiny_sam3(out: Path, seed: int = 0) -> Path:
    """A tiny random `Sam3Model` (SAM 3's ViT 32 wide at 112 px, a 1-layer CLIP text tower, 20 queries) saved as
    transformers saves one, with its CLIP tokenizer and the preprocessor_config.json SAM 3's processor reads."""
    from transformers import Sam3Model

    tok = _clip_tokenizer(out / "tok")
    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam3ImageProcessor", "size": {"height": SIZE, "width": SIZE},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
        "do_resize": True, "do_rescale": True, "do_normalize": True, "resample": 2}))
    return out


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory) -> Path:
    return build_tiny_sam3(tmp_path_factory.mktemp("tiny-sam3"))


@pytest.fixture(scope="module")
def detector(sam3_dir):
    from groundscope.models.loading import load_detector

    return load_detector(str(sam3_dir))


@pytest.fixture(scope="module")
def hf_post():
    """transformers' `Sam3ImageProcessor.post_process_instance_segmentation`, the function itself.

    Its module imports ``torchvision.ops.boxes.batched_nms`` at the top (for mask generation, which this function
    never calls) and torchvision is not installed: a stand-in module answers that import while the module loads,
    and is removed again, with the module, so nothing else sees either."""
    names = ("torchvision", "torchvision.ops", "torchvision.ops.boxes")
    target = "transformers.models.sam3.image_processing_sam3"
    saved = {n: sys.modules.get(n) for n in names + (target,)}
    stub = {n: types.ModuleType(n) for n in names}

    def batched_nms(*_, **__):
        raise AssertionError("batched_nms is not part of the post-processing under test")

    stub["torchvision.ops.boxes"].batched_nms = batched_nms
    sys.modules.update(stub)
    try:
        import importlib

        module = importlib.import_module(target)
    except Exception as e:  # a transformers whose module needs more of torchvision
        pytest.skip(f"transformers' Sam3ImageProcessor module does not load without torchvision: {e}")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    fn = module.Sam3ImageProcessor.post_process_instance_segmentation
    return lambda outputs, **kw: fn(None, outputs, **kw)  # `self` is unused by the function


def _image(h, w, seed):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


IMAGES = [(90, 140, 0), (60, 50, 1)]


@torch.no_grad()
def _reference(folder: Path, image, text: str, post) -> dict:
    """transformers' documented text path, one (image, text) pair: Sam3Processor's pixels (Sam2Processing, held
    equal to Sam3ImageProcessor in tests/test_segmenter.py) and tokens (max_length 32 padding) ->
    Sam3Model(pixel_values, input_ids, attention_mask) -> post_process_instance_segmentation(threshold -1: all
    queries)."""
    from transformers import AutoTokenizer, Sam3Model

    from groundscope.models.sam2_processing import Sam2Processing

    model = Sam3Model.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok([text], padding="max_length", max_length=32, return_tensors="pt")
    px = Sam2Processing.from_folder(folder).pixel_values([image])
    out = model(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return post(out, threshold=-1.0, mask_threshold=0.5, target_sizes=[(image.height, image.width)])[0]


def _per_class(d, k):
    return d[np.flatnonzero(d.class_ids == k)]


# ---------------------------------------------------------------------------------------------- post-processing
def test_post_process_equals_transformers(sam3_dir, hf_post):
    from transformers import Sam3Model

    from groundscope.models.sam3_detector import post_process_instance_segmentation

    model = Sam3Model.from_pretrained(sam3_dir).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, SIZE, SIZE), input_ids=torch.randint(0, 500, (2, 32)),
                    attention_mask=torch.ones(2, 32, dtype=torch.long))
    scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid()).flatten()
    threshold = float(scores.median())  # about half the queries kept
    for sizes in ([(90, 140), (60, 50)], None):
        ours = post_process_instance_segmentation(out, threshold=threshold, mask_threshold=0.5, target_sizes=sizes)
        ref = hf_post(out, threshold=threshold, mask_threshold=0.5, target_sizes=sizes)
        for a, b in zip(ours, ref):
            assert 0 < len(a["scores"]) < 20
            torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=0)
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
            assert a["masks"].dtype == b["masks"].dtype and torch.equal(a["masks"], b["masks"])


def test_post_process_formula_by_hand():
    """image_processing_sam3.py post_process_instance_segmentation, worked out for two queries on a 4x6 image."""
    from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput

    from groundscope.models.sam3_detector import post_process_instance_segmentation

    logit = torch.log(torch.tensor([4.0, 1 / 3]))  # sigmoid: 0.8, 0.25
    out = Sam3ImageSegmentationOutput(
        pred_logits=logit[None], presence_logits=torch.zeros(1, 1),  # presence 0.5: scores 0.4, 0.125
        pred_boxes=torch.tensor([[[0.1, 0.25, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]]]),
        pred_masks=torch.tensor([[[[10.0, -10.0], [-10.0, -10.0]], [[0.0, 0.0], [0.0, 0.0]]]]))
    (res,) = post_process_instance_segmentation(out, threshold=0.3, target_sizes=[(4, 6)])
    torch.testing.assert_close(res["scores"], torch.tensor([0.4]))
    torch.testing.assert_close(res["boxes"], torch.tensor([[0.6, 1.0, 3.0, 4.0]]))
    # bilinear 2x2 -> 4x6 of the probabilities: only pixels nearest the top-left cell pass 0.5
    probs = torch.tensor([[10.0, -10.0], [-10.0, -10.0]]).sigmoid()
    up = torch.nn.functional.interpolate(probs[None, None], size=(4, 6), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(res["masks"][0].bool(), up > 0.5)
    assert res["masks"][0, 0, 0] == 1 and res["masks"][0, 3, 5] == 0


# ---------------------------------------------------------------------------------------------- detect
def test_detect_equals_transformers_per_class(sam3_dir, detector, hf_post):
    from groundscope.detections import Detections

    imgs = [_image(*s) for s in IMAGES]
    classes = ["cat", "a red dog"]
    dets = detector.detect(imgs, classes, batch_size=4)
    assert isinstance(dets, list) and len(dets) == 2
    for im, d in zip(imgs, dets):
        assert isinstance(d, Detections) and d.has_masks and len(d) == 40  # 20 queries x 2 classes
        assert np.all(np.diff(d.scores) <= 0)
        for k, name in enumerate(classes):
            mine = _per_class(d, k)
            assert set(mine.labels) == {name}
            ref = _reference(sam3_dir, im, name, hf_post)
            order = torch.argsort(ref["scores"], descending=True, stable=True)
            np.testing.assert_allclose(mine.scores, ref["scores"][order].numpy(), rtol=1e-5, atol=1e-6)
            boxes = ref["boxes"][order].clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, im.width)  # groundscope clips to the image
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, im.height)
            np.testing.assert_allclose(mine.xyxy, boxes.numpy(), rtol=1e-5, atol=1e-4)
            ref_masks = ref["masks"][order].bool().numpy()
            assert mine.mask_array().shape == (20, im.height, im.width)
            assert (mine.mask_array() != ref_masks).mean() < 1e-4  # equal (a float tie at 0.5 could flip a pixel)


def test_batching_and_class_sets_do_not_change_results(detector):
    imgs = [_image(*s) for s in IMAGES]
    both = detector.detect(imgs, ["cat", "dog"], batch_size=4)
    one_by_one = detector.detect(imgs, ["cat", "dog"], batch_size=1)
    alone = [detector.detect(imgs, [name], batch_size=2) for name in ("cat", "dog")]
    for i in range(2):
        for k in range(2):
            ref = alone[k][i]
            for d in (both[i], one_by_one[i]):
                mine = _per_class(d, k)
                np.testing.assert_allclose(mine.scores, ref.scores, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(mine.xyxy, ref.xyxy, rtol=1e-5, atol=1e-4)
                assert (mine.mask_array() != ref.mask_array()).mean() < 1e-4
    single = detector.detect(imgs[1], ["cat", "dog"])  # one image in, one Detections out
    np.testing.assert_allclose(single.scores, both[1].scores, rtol=1e-5, atol=1e-6)


def test_image_encoded_once_and_text_cached(detector):
    model = detector.model
    calls = {"vision": 0, "images": 0, "text": 0, "texts": 0}
    vision_fwd, text_fwd = model.vision_encoder.forward, model.text_encoder.forward

    def count_vision(pixel_values, *a, **k):
        calls["vision"] += 1
        calls["images"] += len(pixel_values)
        return vision_fwd(pixel_values, *a, **k)

    def count_text(*a, input_ids=None, **k):
        calls["text"] += 1
        calls["texts"] += len(input_ids)
        return text_fwd(*a, input_ids=input_ids, **k)

    detector.clear_cache()
    model.vision_encoder.forward, model.text_encoder.forward = count_vision, count_text
    try:
        imgs = [_image(*s) for s in IMAGES]
        detector.detect(imgs, ["cat", "dog", "bird"], batch_size=4)  # 6 pairs: 2 passes on one encoding
        assert calls["vision"] == 1 and calls["images"] == 2
        assert calls["text"] == 1 and calls["texts"] == 3
        detector.detect(imgs, ["cat", "dog", "bird"], batch_size=1)
        assert calls["images"] == 4  # each image once more, however many classes
        assert calls["texts"] == 3  # the prompts' encodings came from the cache
    finally:
        del model.vision_encoder.forward, model.text_encoder.forward


def test_thresholds_top_k_nms_and_no_masks(detector):
    im = _image(*IMAGES[0])
    full = detector.detect(im, ["cat", "dog"])
    top = detector.detect(im, ["cat", "dog"], max_detections=5, masks=False)
    assert len(top) == 5 and top.masks is None
    np.testing.assert_allclose(top.scores, full.scores[:5], rtol=1e-6)
    t = float(full.scores[7])
    kept = detector.detect(im, ["cat", "dog"], box_threshold=t)
    assert len(kept) == int((full.scores >= t).sum())
    assert (kept.xyxy[:, 0::2] <= im.width).all() and (kept.xyxy >= 0).all()
    nms = detector.detect(im, ["cat", "dog"], nms_iou=0.5)
    assert len(nms) <= len(full) and nms.has_masks
    np.testing.assert_array_equal(nms.xyxy, full.nms(0.5).xyxy)


# ---------------------------------------------------------------------------------------------- other tasks, errors
def test_ground_prompts_each_phrase(detector):
    im = _image(*IMAGES[0])
    caption = "A cat beside a red dog"
    g = detector.ground(im, caption, ["a cat", "a red dog"], box_threshold=0.0, text_threshold=0.25)
    d = detector.detect(im, ["A cat", "a red dog"])
    np.testing.assert_allclose(g.scores, d.scores, rtol=1e-5, atol=1e-6)
    assert set(g.labels) == {"A cat", "a red dog"}  # the caption's own characters
    for label, cid, span in zip(g.labels, g.class_ids, g.spans):
        assert span == ([(0, 5)] if cid == 0 else [(13, 22)])
        assert caption[span[0][0] : span[0][1]] == label
    spans = detector.ground(im, caption, [(2, 5)])
    assert set(spans.labels) == {"cat"} and spans.spans[0] == [(2, 5)]


def test_refer_top_k(detector):
    im = _image(*IMAGES[1])
    d = detector.detect(im, ["the dog"])
    r = detector.refer(im, "the dog", top_k=3)
    assert len(r) == 3 and r.labels == ["the dog"] * 3 and list(r.class_ids) == [0, 0, 0]
    assert r.spans == [[(0, 7)]] * 3 and r.has_masks
    np.testing.assert_allclose(r.scores, d.scores[:3], rtol=1e-5, atol=1e-6)
    assert len(detector.refer([im, im], ["the dog", "a cat"])) == 2


def test_errors_name_the_fix(detector):
    from groundscope.models.captioner import CaptionerError
    from groundscope.prompts import PromptError

    im = _image(*IMAGES[0])
    with pytest.raises(PromptError, match="explicit phrases.*phrases="):
        detector.ground(im, "a cat beside a dog")
    with pytest.raises(CaptionerError, match="cannot caption"):
        detector.caption(im)
    with pytest.raises(CaptionerError):
        detector._require_caption_head()  # what `groundscope caption` asks first
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        detector.detect(im, ["cat"], colour="red")
    with pytest.raises(ValueError, match="rec_rule must be one of mean, mmgdino, llmdet, not 'best'"):
        detector.refer(im, "the cat", rec_rule="best")
    with pytest.raises(PromptError, match=r"class 1 \('  '\) is empty"):
        detector.detect(im, ["cat", "  "])
    with pytest.raises(PromptError, match="does not occur"):
        detector.ground(im, "a cat", ["a dog"])
    with pytest.raises(PromptError, match="expression is empty"):
        detector.refer(im, "  ")


def test_grounding_dino_options_and_protocol_settings(detector):
    """The options `eval run`'s official settings pass (groundscope.evaluate.protocols.official_settings)."""
    im = _image(*IMAGES[0])
    plain = detector.detect(im, ["cat", "dog"])
    same = detector.detect(im, ["cat", "dog"], chunk_size=40, score_rule="max")  # no effect on SAM 3
    np.testing.assert_array_equal(same.scores, plain.scores)
    assert detector.refer(im, "the dog", rec_rule="mmgdino").scores == detector.refer(im, "the dog").scores
    # per_chunk: each class's top k, class by class (LVIS: chunk_size=40, per_chunk=True, official_names=True)
    per = detector.detect(im, ["cat", "dog"], max_detections=3, per_chunk=True)
    assert list(per.class_ids) == [0, 0, 0, 1, 1, 1]
    for k in range(2):
        np.testing.assert_allclose(per.scores[3 * k : 3 * k + 3], _per_class(plain, k).scores[:3], rtol=1e-6)
    # duplicates: merged into the first id by default, kept under their own id with official_names
    with pytest.warns(UserWarning, match="repeats index 0"):
        dup = detector.detect(im, ["cat", "Cat", "dog"])
    assert set(dup.class_ids) == {0, 2} and len(dup) == 40
    official = detector.detect(im, ["cat", "Cat", "", "dog"], official_names=True)
    assert set(official.class_ids) == {0, 1, 3} and official.labels.count("Cat") == 20
    np.testing.assert_allclose(_per_class(official, 1).scores, _per_class(plain, 0).scores, rtol=1e-6)
    blank = detector.detect([im, im], ["", " "], official_names=True)
    assert [len(d) for d in blank] == [0, 0] and blank[0].masks == []  # no boxes, still "with masks"
    # ODinW's caption_prompt: SAM 3 is prompted with its "name"
    enh = detector.detect(im, ["pet", "dog"], caption_prompt={"pet": {"prefix": "there is a ", "name": "cat",
                                                                      "suffix": " on the rug"}})
    np.testing.assert_allclose(_per_class(enh, 0).scores, _per_class(plain, 0).scores, rtol=1e-6)
    assert set(_per_class(enh, 0).labels) == {"pet"}


def test_running_top_k_equals_the_global_top_k(detector):
    """Candidates are cut to max_detections after every pass: the result is the global stable top-k."""
    im = _image(*IMAGES[1])
    names = ["cat", "dog", "bird", "a red dog", "tree"]
    full = detector.detect(im, names, max_detections=300)
    for k, bs in ((7, 1), (7, 2), (25, 3), (1, 4)):
        cut = detector.detect(im, names, max_detections=k, batch_size=bs)
        np.testing.assert_array_equal(cut.class_ids, full.class_ids[:k])
        np.testing.assert_allclose(cut.scores, full.scores[:k], rtol=1e-6)
        np.testing.assert_array_equal(cut.mask_array(), full.mask_array()[:k])


def test_eval_run_with_official_settings(detector, tmp_path):
    """`groundscope eval run` code path on a tiny COCO file (official settings: official_names, top 300) and a
    refexp file (official rec_rule), with SAM 3's masks written as segmentations."""
    from groundscope.evaluate.run import run_evaluation

    folder = tmp_path / "images"
    folder.mkdir()
    for i, s in enumerate(IMAGES):
        _image(*s).save(folder / f"{i}.png")
    coco = {"images": [{"id": i + 1, "file_name": f"{i}.png", "width": s[1], "height": s[0]}
                       for i, s in enumerate(IMAGES)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 30], "area": 1200,
                             "iscrowd": 0}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    m = run_evaluation(detector, "coco", tmp_path / "coco.json", folder, tmp_path / "out", progress=False,
                       model_name="sam3")
    assert 0.0 <= m["AP"] <= 1.0 and m["settings"]["official_names"] is True
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 80 and all("segmentation" in r for r in results)
    ref = {"images": [{"id": 0, "file_name": "0.png", "caption": "the cat"}],
           "annotations": [{"id": 1, "image_id": 0, "bbox": [10, 10, 40, 30]}]}
    (tmp_path / "refcoco_val.json").write_text(json.dumps(ref))
    m = run_evaluation(detector, "refexp", tmp_path / "refcoco_val.json", folder, tmp_path / "out2", progress=False,
                       model_name="sam3")
    assert m["settings"]["rec_rule"] == "mmgdino" and m["num_expressions"] == 1


# ---------------------------------------------------------------------------------------------- loading
def test_load_detector_names_and_folders(sam3_dir, monkeypatch, tmp_path):
    from groundscope.models import loading
    from groundscope.models.hub import ModelLoadError
    from groundscope.models.registry import REGISTRY, ModelEntry
    from groundscope.models.sam3_detector import Sam3Detector

    # a SAM 3 registry entry is a segmenter, and load_detector takes it as SAM 3's detector
    entry = ModelEntry("sam3-local", str(sam3_dir), "SAM 3", "ViT (tiny)", "test", kind="segmenter")
    monkeypatch.setitem(REGISTRY, "sam3-local", entry)
    det = loading.load_detector("sam3-local")
    assert isinstance(det, Sam3Detector) and det.name == "sam3-local" and det.device.type == "cpu"
    # "sam3" itself: resolved (not refused as a segmenter); offline and uncached it names the fix
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError, match=r"'sam3' \(facebook/sam3\) is not in the local cache.*HF_HUB_OFFLINE"):
        loading.load_detector("sam3")
    # other segmenters are still refused with their loader
    with pytest.raises(ModelLoadError, match="is a segmenter"):
        loading.load_detector("sam-vit-base")
    bf16 = loading.load_detector(str(sam3_dir), precision="bf16")
    assert bf16.dtype == torch.bfloat16
    d = bf16.detect(_image(*IMAGES[0]), ["cat"])
    assert len(d) == 20 and d.has_masks and np.isfinite(d.scores).all()


def test_sam3_video_folder_loads_its_detector(sam3_dir, detector, tmp_path):
    """The released facebook/sam3 folder is a sam3_video checkpoint: config.detector_config and detector_model.*
    weights (beside the tracker's); load_detector takes its image detector."""
    from safetensors.torch import load_file, save_file
    from transformers import Sam3Config, Sam3VideoConfig

    from groundscope.models.loading import load_detector

    out = tmp_path / "video"
    out.mkdir()
    cfg = Sam3Config.from_pretrained(sam3_dir)
    Sam3VideoConfig(detector_config=cfg.to_dict()).save_pretrained(out)
    weights = load_file(str(sam3_dir / "model.safetensors"))
    save_file({f"detector_model.{k}": v for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    for f in sam3_dir.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            (out / f.name).write_bytes(f.read_bytes())
    assert json.loads((out / "config.json").read_text())["model_type"] == "sam3_video"
    video = load_detector(str(out))
    im = _image(*IMAGES[0])
    a, b = video.detect(im, ["cat"]), detector.detect(im, ["cat"])
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    np.testing.assert_allclose(a.xyxy, b.xyxy, rtol=1e-6)
