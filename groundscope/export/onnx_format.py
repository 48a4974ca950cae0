"""What an exported graph file holds besides its weights: input and output names, dynamic axes, and the metadata
keys under which groundscope stores its config and tokenizer. The exporter (`groundscope.export.onnx`) writes them
and the runtime (`groundscope.export.onnx_runtime`) reads them; shapes of each input are in the exporter's
docstring.
"""

INPUT_NAMES = (
    "pixel_values",
    "pixel_mask",
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "text_self_attention_mask",
    "position_ids",
)
OUTPUT_NAMES = ("logits", "pred_boxes")
DYNAMIC_AXES = {
    "pixel_values": {0: "batch", 2: "height", 3: "width"},
    "pixel_mask": {0: "batch", 1: "height", 2: "width"},
    "input_ids": {0: "batch", 1: "text"},
    "attention_mask": {0: "batch", 1: "text"},
    "token_type_ids": {0: "batch", 1: "text"},
    "text_self_attention_mask": {0: "batch", 1: "text", 2: "text"},
    "position_ids": {0: "batch", 1: "text"},
    "logits": {0: "batch"},
    "pred_boxes": {0: "batch"},
}
METADATA_CONFIG = "groundscope.config"  # JSON: max_text_len, image_size, special_tokens, num_queries, model
METADATA_TOKENIZER = "groundscope.tokenizer_json"  # the fast tokenizer's tokenizer.json, so the file stands alone
