"""The caption head against LLMDet's own code (iSEE-Laboratory/LLMDet): the ChatML conversation and its labels,
whole-sequence truncation, xyxy box encodings, the separator's init, and the region cross-attention in the LM.

The references here are re-implementations of the official procedures in a few lines each (the tokenizer's
`apply_chat_template` with LLMDet's reset template, per message; the official decoder-layer forward with its
cross-attention block; mmdet's deformable attention with grid_sample), not the code under test.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from groundscope.models.caption_prompt import IGNORE_INDEX, render_chatml
from groundscope.models.captioner import CaptionHead, CaptionHeadConfig, grid_boxes, load_caption_head
from groundscope.models.region_cross_attn import placement_indices

OFFICIAL_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                     "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                     "{% endif %}")
WORDS = ("system user assistant You are a helpful . Describe the image in detail region phrase red circle big "
         "blue square on left of A Blue Red").split()


def _tokenizer(extra: tuple[str, ...] = ()):
    """A Qwen2-style tokenizer: words, single spaces and newlines are tokens; ChatML special tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "\n": 1, " ": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s|[A-Za-z]+|[^\sA-Za-z]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *extra],
                            "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    return tok


def _lm(vocab: int, layers: int = 2, hidden: int = 32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


def _official_ids(prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """text_transformers.py RandomSamplingNegPos2.get_LMM_input, with the image token kept as its own id."""
    tok = _tokenizer(("<image>",))
    tok.chat_template = OFFICIAL_TEMPLATE

    def encode(conv):
        out = tok.apply_chat_template(conv, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    unmask = {tok.convert_tokens_to_ids("\n"), tok.convert_tokens_to_ids("<|im_start|>"),
              tok.convert_tokens_to_ids("<|im_end|>")}
    ids = encode([{"role": "system", "content": "You are a helpful assistant."}])
    ids += encode([{"role": "user", "content": f"<image>\n{prompt}"}])
    labels = [i if i in unmask else IGNORE_INDEX for i in ids]
    answer_ids = encode([{"role": "assistant", "content": answer}])
    return ids + answer_ids, labels + answer_ids, tok.convert_tokens_to_ids("<image>")


def _expand(ids, labels, image_id, v):
    """Splice v visual positions (label IGNORE) where the image id is, as llava_arch does."""
    at = ids.index(image_id)
    return ids[:at] + [None] * v + ids[at + 1:], labels[:at] + [IGNORE_INDEX] * v + labels[at + 1:]


def _head(layers: int = 2, **cfg) -> CaptionHead:
    tok = _tokenizer()
    return CaptionHead(CaptionHeadConfig(llm="-", d_model=16, grids=[2, 3], **cfg), _lm(len(tok), layers), tok)


# ---------------------------------------------------------------------------------------------- sequence
def test_chatml_text_is_the_official_conversation():
    text = render_chatml("Describe the image in detail.", "A red circle.")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<image>\nDescribe the image in detail.<|im_end|>\n"
                    "<|im_start|>assistant\nA red circle.<|im_end|>\n")


@pytest.mark.parametrize("prompt, answer", [("Describe the image in detail.", "A big red circle on the left."),
                                            ("Describe the region in a phrase.", "Blue square.")])
def test_ids_and_labels_match_the_official_ones(prompt, answer):
    head = _head()
    assert head.layout(prompt).template == "chatml"  # auto: the tokenizer has <|im_start|> / <|im_end|>
    v = 3
    ref_ids, ref_labels = _expand(*_official_ids(prompt, answer), v)
    visual = torch.randn(1, v, head.hidden)
    embeds, mask, labels = head.build_inputs(visual, prompt, [answer], max_tokens=1600)
    assert labels[0].tolist() == ref_labels
    emb = head.lm.get_input_embeddings().weight
    for t, i in enumerate(ref_ids):
        want = visual[0, t - ref_ids.index(None)] if i is None else emb[i]
        torch.testing.assert_close(embeds[0, t], want)
    assert mask.sum() == len(ref_ids)
    # what is supervised: the assistant turn whole, and \n / <|im_start|> / <|im_end|> before it
    tok = head.tokenizer
    sup = [i for i in labels[0].tolist() if i != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(sup[:9]) == ["<|im_start|>", "\n", "<|im_end|>", "\n", "<|im_start|>", "\n",
                                                  "\n", "<|im_end|>", "\n"]
    assert sup[9:] == tok(f"<|im_start|>assistant\n{answer}<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in sup


def test_max_tokens_bounds_the_whole_sequence():
    """LLMDet cuts prompt + visual tokens + answer at 1600 / 40 (llava_arch.py ~L541, gd_det ~L1029)."""
    head = _head()
    prompt, answer = "Describe the region in a phrase.", "A big red circle on the left of the blue square."
    ref_ids, ref_labels = _expand(*_official_ids(prompt, answer), 1)
    assert len(ref_ids) > 40
    _, mask, labels = head.build_inputs(torch.randn(1, 1, head.hidden), prompt, [answer], max_tokens=40)
    assert labels.shape[1] == 40 and mask.sum() == 40
    assert labels[0].tolist() == ref_labels[:40]
    with pytest.raises(Exception, match="no room for an answer"):
        head.build_inputs(torch.randn(1, 1, head.hidden), prompt, [answer], max_tokens=20)


def test_generation_prompt_ends_with_the_assistant_header():
    head = _head()
    lay = head.layout("Describe the image in detail.")
    tok = head.tokenizer
    assert tok.convert_ids_to_tokens(lay.generation) == ["<|im_start|>", "assistant", "\n"]
    assert lay.stop[0] == tok.convert_tokens_to_ids("<|im_end|>")


# ---------------------------------------------------------------------------------------------- tokens
def _gen_sineembed(pos):
    """grounding_dino.py gen_sineembed_for_position, for (N, 4)."""
    dim_t = torch.arange(128, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / 128)

    def enc(c):
        p = c[:, None] * 2 * math.pi / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    return torch.cat([enc(pos[:, 1]), enc(pos[:, 0]), enc(pos[:, 2]), enc(pos[:, 3])], 1)


def test_cells_and_regions_are_sine_encoded_as_xyxy():
    # grounding_dino.py ~L477-479: cells [x0, y0, x1, y1], row-major
    assert torch.allclose(grid_boxes(2), torch.tensor([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1],
                                                       [.5, .5, 1, 1]]))
    head = _head()
    feats, boxes = torch.randn(3, 16), torch.tensor([[.5, .5, .2, .4], [.3, .6, .2, .2], [.1, .1, .1, .1]])
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    p = head.region_projector
    want = p.mlp(feats) + p.pos_proj(_gen_sineembed(xyxy))
    torch.testing.assert_close(head.region_tokens(feats, boxes)[:, 0], want)


def test_separator_is_initialised_as_an_embedding():
    torch.manual_seed(0)
    tok = _tokenizer()
    head = CaptionHead(CaptionHeadConfig(llm="-", d_model=16), _lm(len(tok), 1, hidden=256), tok)
    assert 0.8 < float(head.separator.detach().std()) < 1.2  # nn.Embedding: N(0, 1), not 0.02


# ---------------------------------------------------------------------------------------------- cross-attention
def test_cross_attention_placement():
    assert placement_indices(24, 6) == [0, 4, 8, 12, 16, 20]  # LLMDet: Qwen2-0.5B's 24 layers
    assert placement_indices(4, 6) == [0, 1, 2, 3]
    assert placement_indices(12, 6) == [0, 2, 4, 6, 8, 10]


def _msda_reference(attn, query, value, valid, shapes, ref):
    """mmcv/mmdet multi-scale deformable attention, batch_first, identity=0, with grid_sample."""
    n, q, _ = query.shape
    heads, levels, points = attn.n_heads, attn.n_levels, attn.n_points
    v = attn.value_proj(value).masked_fill(~valid[..., None], 0.0)
    off = attn.sampling_offsets(query).view(n, q, heads, levels, points, 2)
    w = attn.attention_weights(query).view(n, q, heads, levels * points).softmax(-1).view(n, q, heads, levels, points)
    loc = ref[:, :, None, :, None, :2] + off / points * ref[:, :, None, :, None, 2:] * 0.5
    d = v.shape[-1] // heads
    out, start = 0, 0
    for lvl, (h, wd) in enumerate(shapes):
        vl = v[:, start:start + h * wd].view(n, h, wd, heads, d).permute(0, 3, 4, 1, 2).reshape(n * heads, d, h, wd)
        grid = 2 * loc[:, :, :, lvl] - 1  # (n, q, heads, points, 2)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(n * heads, q, points, 2)
        s = nn.functional.grid_sample(vl, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        wl = w[:, :, :, lvl].permute(0, 2, 1, 3).reshape(n * heads, 1, q, points)
        out = out + (s * wl).sum(-1)  # (n*heads, d, q)
        start += h * wd
    out = out.view(n, heads * d, q).transpose(1, 2)
    return attn.output_proj(out)


def test_region_cross_attention_is_the_official_layer():
    """Hooks on any HF decoder = the official Qwen2DecoderLayer with its cross-attention between attention and
    MLP (modeling_qwen2.py ~L928-975), at layers 0, 4, ..., 20 of 24."""
    tok = _tokenizer()
    lm = _lm(len(tok), layers=24)
    ref_lm = copy.deepcopy(lm)
    head = CaptionHead(CaptionHeadConfig(llm="-", d_model=16, grids=[2, 3], cross_attn_layers=6, num_levels=2,
                                         cross_attn_heads=2), lm, tok)
    assert head.cross_attn.at == [0, 4, 8, 12, 16, 20] and head.cross_attn.placement == "attention"
    blk = head.cross_attn.layers[0]
    assert not blk.up_proj.weight.any() and not blk.up_proj.bias.any()  # zero-init (modeling_qwen2.py ~L894)
    assert not blk.attn.sampling_offsets.weight.any() and not blk.attn.attention_weights.weight.any()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in head.cross_attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)

    shapes = [(4, 6), (2, 3)]
    n, s = 2, 30
    memory = torch.randn(n, s, 16)
    valid = torch.ones(n, s, dtype=torch.bool)
    valid[1, :24] = torch.zeros(4, 6, dtype=torch.bool).index_fill_(1, torch.arange(4), True).flatten()
    valid[1, 24:] = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool).flatten()
    boxes = torch.tensor([[.5, .5, .4, .4], [.3, .4, .2, .3]])
    cross = head.cross_attention_input(memory, valid, shapes, boxes)
    ratios = torch.tensor([[[1., 1.], [1., 1.]], [[4 / 6, 1.], [2 / 3, 1.]]])
    torch.testing.assert_close(cross.reference_points, boxes[:, None, None] * torch.cat([ratios, ratios], -1)[:, None])

    prompt, answers = "Describe the region in a phrase.", ["Blue square.", "A big red circle."]
    visual = torch.randn(n, 1, head.hidden)
    embeds, mask, _ = head.build_inputs(visual, prompt, answers, 40)
    start = len(head.layout(prompt).before)
    with torch.no_grad(), head._cross(cross, prompt, embeds.shape[1], 1):
        got = head.lm(inputs_embeds=embeds, attention_mask=mask).logits

    layers = ref_lm.model.layers

    def official(layer, block):
        def forward(hidden_states, **kw):
            residual = hidden_states
            h, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kw)
            h = residual + h
            r = h[:, start:start + 1]
            x = _msda_reference(block.attn, block.down_proj(r) + cross.query_pos, memory, valid, shapes,
                                cross.reference_points)
            r = block.norm(block.up_proj(x) + r)
            h = torch.cat([h[:, :start], r, h[:, start + 1:]], 1)
            return h + layer.mlp(layer.post_attention_layernorm(h))
        return forward

    for k, i in enumerate(head.cross_attn.at):
        layers[i].forward = official(layers[i], head.cross_attn.layers[k])
    with torch.no_grad():
        want = ref_lm(inputs_embeds=embeds, attention_mask=mask).logits
        plain = head.lm(inputs_embeds=embeds, attention_mask=mask).logits  # outside the context: no blocks
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-3


def test_cross_attention_trains_saves_and_loads(tmp_path):
    tok = _tokenizer()
    lm = _lm(len(tok), layers=4)
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    head = CaptionHead(CaptionHeadConfig(llm=str(tmp_path / "lm"), d_model=16, grids=[2, 3], cross_attn_layers=6,
                                         num_levels=2, cross_attn_heads=2, template="chatml"), lm, tok)
    lm.requires_grad_(False)
    assert head.cross_attn.at == [0, 1, 2, 3]
    shapes = [(4, 6), (2, 3)]
    memory, valid = torch.randn(2, 30, 16), torch.ones(2, 30, dtype=torch.bool)
    boxes = torch.tensor([[.5, .5, .4, .4], [.3, .4, .2, .3]])
    cross = head.cross_attention_input(memory, valid, shapes, boxes)
    loss = head.region_loss(head.region_tokens(torch.randn(2, 16), boxes), ["Blue square.", "Red circle."], cross)
    loss.backward()
    # the zero-initialised up_proj gets a gradient, so the blocks learn
    assert head.cross_attn.layers[0].up_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in head.cross_attn.parameters():
            p.add_(0.1)
    head.save(tmp_path / "head")
    assert any(k.startswith("cross_attn.") for k in head.head_state_dict())
    loaded = load_caption_head(tmp_path / "head")
    for k, v in head.head_state_dict().items():
        torch.testing.assert_close(loaded.head_state_dict()[k], v)
    assert loaded.config.template == "chatml" and loaded.config.box_encoding == "xyxy"
    # generation runs the blocks on the prompt pass
    out = loaded.generate(loaded.region_tokens(torch.randn(1, 16), boxes[:1]), loaded.config.region_prompt, 3,
                          loaded.cross_attention_input(memory[:1], valid[:1], shapes, boxes[:1]))
    assert isinstance(out[0], str)


def test_heads_saved_before_keep_their_layout(tmp_path):
    """A caption_head.json without the new keys loads with the layout it was trained with."""
    tok = _tokenizer()
    lm = _lm(len(tok), layers=1)
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    head = CaptionHead(CaptionHeadConfig(llm=str(tmp_path / "lm"), d_model=16, grids=[2, 3]), lm, tok)
    head.save(tmp_path / "head")
    cfg = json.loads((tmp_path / "head" / "caption_head.json").read_text())
    for key in ("template", "box_encoding", "cross_attn_layers", "cross_attn_heads", "cross_attn_points",
                "num_levels", "region_index", "system_prompt"):
        cfg.pop(key)
    (tmp_path / "head" / "caption_head.json").write_text(json.dumps(cfg))
    old = load_caption_head(tmp_path / "head")
    assert old.config.box_encoding == "cxcywh" and old.config.template == "tokenizer" and old.cross_attn is None
    torch.testing.assert_close(old.separator, head.separator)


def test_llmdet_configs_follow_the_official_recipe():
    """configs/grounding_dino_swin_t.py: MM-GDINO-T o365v1+goldg+grit+v3det start, 150k iterations, milestones
    120k / 140k, global batch 16, backbone and neck frozen, 6 cross-attention layers, ChatML."""
    from pathlib import Path

    import yaml

    from groundscope.train.config import config_from_dict

    root = Path(__file__).resolve().parents[1] / "configs"
    s1 = config_from_dict(yaml.safe_load((root / "llmdet_stage1.yaml").read_text()))
    s2 = config_from_dict(yaml.safe_load((root / "llmdet_stage2.yaml").read_text()))
    assert s1.model.path == "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_grit_v3det"
    assert s1.caption.cross_attn_layers == 6 and s1.caption.template == "chatml"
    assert s1.caption.image_max_tokens == 1600 and s1.caption.region_max_tokens == 40
    assert s2.train.max_steps == 150000 and s2.schedule.milestones == [120000, 140000]
    assert s2.schedule.warmup_steps == 1000 and s2.schedule.warmup_factor == 0.001
    assert s2.train.batch_size * s2.train.accumulate == 16
    assert {"model.backbone", "model.input_proj_vision"} <= set(s2.model.freeze)
    synth = config_from_dict(yaml.safe_load((root / "llmdet_stage2_synth.yaml").read_text()))
    assert "model.input_proj_vision" in synth.model.freeze
