"""Exports of a loaded detector to other runtimes.

    groundscope.export.onnx.export_onnx(detector, "model.onnx")     the whole detector as one ONNX graph
    groundscope.export.onnx_runtime.OnnxDetector("model.onnx")      detect / ground / refer with onnxruntime

The CLI verb is ``groundscope export onnx --model M --out model.onnx`` (groundscope/cli/export.py).
"""
