"""RKD's teacher path with a real CLIP tokenizer (byte-level BPE from a vocab.json + merges.txt written here) and
CLIP's image processor (short-side resize + centre crop), against the reference's text and preprocessing:
"a photo of a {}" (docs/DATASETS.md ~L263), CLIP's preprocess (tools/get_rkd_clip_feat.py ~L140), SigLIP text
padded to its full length, and the reference's proposal prompts (tools/get_rkd_clip_feat.py ~L41)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

CORPUS = ["a photo of a cat", "a photo of a red circle", "a photo of a blue star", "a red cat", "a blue circle",
          "a photo of a dog", "all objects", "all entities"]
SIDE = 32


def _train_bpe(corpus: list[str], num_merges: int = 200) -> list[tuple[str, str]]:
    """A small byte-level BPE training (Sennrich et al.'s algorithm as CLIP's tokenizer applies it: words in
    bytes_to_unicode characters, the last character marked with </w>): merge the most frequent adjacent pair
    (ties: the smallest pair) until no pair occurs twice. Returns the merges in the order learnt."""
    from collections import Counter

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_char = bytes_to_unicode()
    words = Counter(w for line in corpus for w in line.lower().split())
    seqs = {w: [byte_char[b] for b in w.encode("utf-8")] for w in words}
    for w in seqs:
        seqs[w][-1] += "</w>"
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[a, b] += words[w]
        if not pairs or max(pairs.values()) < 2:
            break
        best = min(pairs, key=lambda ab: (-pairs[ab], ab))
        merges.append(best)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    return merges


def _clip_tokenizer(folder: Path, max_length: int = 77):
    """A CLIPTokenizer read from the vocab.json + merges.txt of `_train_bpe` on CORPUS (CLIP's file layout:
    the byte characters, the same with </w>, the merged tokens, then the special tokens)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = _train_bpe(CORPUS)
    vocab = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)  # read from the two files


def _processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel

    out = tmp_path_factory.mktemp("clip")
    tok = _clip_tokenizer(out / "tok")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(image_size=SIDE, patch_size=8, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2), projection_dim=8)
    CLIPModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    _processor().save_pretrained(out)
    return out


def test_clip_tokenizer_is_real_bpe(clip_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(clip_dir))
    assert type(tok).__name__.startswith("CLIPTokenizer")
    # words seen at least twice in the training corpus became whole tokens; "star" (once) stays in pieces
    assert tok.tokenize("a photo of a cat") == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert tok.tokenize("A Photo of a RED circle") == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "circle</w>"]
    assert len(tok.tokenize("star")) > 1
    assert tok.tokenize("cats")[-1] == "s</w>"  # unseen word: split by the merges, not an [UNK]
    ids = tok("a photo of a cat")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 7


def test_teacher_embeds_the_reference_prompt(clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    from groundscope.models.teacher import Teacher

    teacher = Teacher(clip_dir)
    assert teacher.text_template == "a photo of a {}" and teacher.padding is True
    model, tok = CLIPModel.from_pretrained(str(clip_dir)).eval(), AutoTokenizer.from_pretrained(str(clip_dir))

    def manual(texts):
        ids = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    got = teacher.embed_texts(["cat", "red circle"])
    assert torch.allclose(got, manual(["a photo of a cat", "a photo of a red circle"]), atol=1e-5)
    assert not torch.allclose(got, manual(["cat", "red circle"]), atol=1e-3)  # the old "{}" template
    # batch padding does not change a name's embedding (CLIP pools at its EOS token)
    assert torch.allclose(teacher.embed_texts(["cat"]), got[:1], atol=1e-5)
    with pytest.raises(ValueError, match="must contain"):
        Teacher(clip_dir, text_template="a photo")


def test_teacher_crops_go_through_clips_centre_crop(clip_dir):
    from transformers import CLIPModel

    from groundscope.models.teacher import Teacher

    rng = np.random.default_rng(0)
    crop = Image.fromarray(rng.integers(0, 256, (40, 100, 3), dtype=np.uint8))  # wide: the sides are cut off
    # the reference's preprocess (torchvision Resize(short side, bicubic) + CenterCrop + Normalize), by hand
    w, h = crop.size
    resized = crop.resize((int(SIDE * w / h), SIDE), Image.BICUBIC)
    left = int(round((resized.size[0] - SIDE) / 2.0))
    centre = np.asarray(resized.crop((left, 0, left + SIDE, SIDE)), dtype=np.float32) / 255.0
    proc = _processor()
    px = (torch.from_numpy(centre).permute(2, 0, 1) - torch.tensor(proc.image_mean)[:, None, None]) / \
        torch.tensor(proc.image_std)[:, None, None]
    assert torch.allclose(proc(images=[crop], return_tensors="pt")["pixel_values"][0], px, atol=2e-2)
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    with torch.no_grad():
        out = model.get_image_features(pixel_values=px[None])
    expected = F.normalize(getattr(out, "pooler_output", out), dim=-1)
    got = Teacher(clip_dir).embed_images([crop])
    assert got.shape == (1, 8)
    assert torch.allclose(got, expected, atol=2e-3)


def test_siglip_teacher_pads_to_max_length(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    from groundscope.models.teacher import Teacher

    tok = _clip_tokenizer(tmp_path / "tok", max_length=16)
    torch.manual_seed(0)
    cfg = SiglipConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16),
                       vision_config=dict(image_size=SIDE, patch_size=8, hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=1, num_attention_heads=2))
    model = SiglipModel(cfg).eval()
    model.save_pretrained(tmp_path / "siglip")
    tok.save_pretrained(tmp_path / "siglip")
    _processor().save_pretrained(tmp_path / "siglip")
    teacher = Teacher(tmp_path / "siglip")
    assert teacher.padding == "max_length"

    def manual(padding):
        length = {"max_length": 16} if padding == "max_length" else {}
        ids = tok(["a photo of a cat", "a photo of a red circle"], padding=padding, return_tensors="pt", **length)
        with torch.no_grad():
            out = model.get_text_features(input_ids=ids["input_ids"])  # SigLIP: no attention mask, as trained
        return F.normalize(getattr(out, "pooler_output", out), dim=-1)

    got = teacher.embed_texts(["cat", "red circle"])
    assert torch.allclose(got, manual("max_length"), atol=1e-5)
    # SigLIP pools the last position: padded to the batch's longest, a short name's embedding is another one
    assert not torch.allclose(got, manual(True), atol=1e-3)


def test_proposal_prompts_are_the_references():
    from groundscope.distill.regions import RegionSettings

    assert RegionSettings(teacher="t", detector="d").proposal_prompts == [
        "all objects", "all entities", "all visible objects and entities", "all obscure objects and entities"]


def test_training_config_defaults_are_the_references():
    """`rkd:` in a training config starts from the reference's teacher prompt and proposal prompts."""
    from groundscope.distill.regions import REFERENCE_PROPOSAL_PROMPTS
    from groundscope.train.config import RkdSection

    section = RkdSection()
    assert section.text_template == "a photo of a {}"
    assert section.proposal_prompts == list(REFERENCE_PROPOSAL_PROMPTS)


def test_crops_are_the_references_pil_crop():
    """tools/get_rkd_clip_feat.py ~L67-69 crops ``image.crop(box)`` on the float box (PIL rounds each
    coordinate); the guards only act where that crop would be empty or leave the image."""
    from groundscope.models.teacher import crop_regions

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    boxes = np.array([[10.4, 10.6, 50.5, 40.2], [0.2, 3.5, 79.6, 59.4], [33.7, 2.49, 41.51, 20.5]])
    for crop, box in zip(crop_regions(image, boxes), boxes):
        ref = image.crop(tuple(box))
        assert crop.size == ref.size and np.array_equal(np.asarray(crop), np.asarray(ref)), box
    # the old floor/ceil crop was a pixel larger on the fractional sides
    assert crop_regions(image, boxes[:1])[0].size == (40, 29)
    # degenerate or outside boxes still give pixels, inside the image
    thin, outside, empty = crop_regions(image, np.array([[5.0, 5.0, 5.2, 30.0], [70.0, 50.0, 200.0, 90.0],
                                                          [100.0, 100.0, 120.0, 120.0]]))
    assert thin.size == (2, 25) and outside.size == (10, 10) and empty.size == (2, 2)
    assert np.array_equal(np.asarray(outside), np.asarray(image.crop((70, 50, 80, 60))))
