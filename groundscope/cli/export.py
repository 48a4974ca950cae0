"""``groundscope export onnx``: write a detector as one ONNX graph.

    groundscope export onnx --model mm-gdino-tiny --out model.onnx [--opset 17]

After writing, the graph is run once with onnxruntime on a random image of another size than the one traced,
and its outputs are compared with PyTorch's (``--no-verify`` skips it). Exit codes: 0 written (and verified),
1 written but onnxruntime disagrees with PyTorch, 2 bad arguments, model or export failure.
"""

from __future__ import annotations

from pathlib import Path

import typer

from groundscope.cli.common import console, fail, load_model

export_app = typer.Typer(help="Export a detector to other runtimes (ONNX).", no_args_is_help=True)

# The verification run: an image size and text unlike the traced example's (449x601, 3 phrases).
VERIFY_SIZE = (352, 512)
VERIFY_TEXT = "a dog. a very long name for a lamp. bed. traffic light. person."
VERIFY_TOLERANCE = 1e-3


@export_app.command("onnx")
def onnx_cmd(
    model: str = typer.Option("llmdet-tiny", "--model", "-m", help="Registry name, hub id or local directory."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    opset: int = typer.Option(17, "--opset", min=16, help="ONNX opset (>= 16 for GridSample)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare onnxruntime with PyTorch afterwards."),
) -> None:
    """The whole detector as one ONNX graph with dynamic batch, image size and text length."""
    from groundscope.export.onnx import OnnxExportError, export_onnx, verify_onnx

    if out.suffix.lower() != ".onnx":
        raise fail(f"--out '{out}': give a file name ending in .onnx")
    detector = load_model(model, "cpu")
    try:
        with console.status(f"exporting {detector.name} ..."):
            path = export_onnx(detector, out, opset=opset)
    except OnnxExportError as e:
        raise fail(str(e))
    except Exception as e:  # the exporters' errors are many and long; the user needs the model and the reason
        raise fail(f"exporting '{detector.name}' failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    size_mb = path.stat().st_size / 2**20
    console.print(f"wrote [bold]{path}[/] ({size_mb:.0f} MB)", highlight=False)
    if not verify:
        return
    with console.status("checking onnxruntime against PyTorch ..."):
        diff = verify_onnx(detector, path, VERIFY_SIZE, VERIFY_TEXT)
    ok = max(diff.values()) <= VERIFY_TOLERANCE
    colour = "green" if ok else "red"
    console.print(
        f"[{colour}]onnxruntime vs PyTorch[/] at {VERIFY_SIZE[0]}x{VERIFY_SIZE[1]}: max |logit diff| "
        f"{diff['logits']:.2e}, max |box diff| {diff['boxes']:.2e} (tolerance {VERIFY_TOLERANCE:g})",
        highlight=False,
    )
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``export`` verb (with its ``onnx`` command) to `app`."""
    app.add_typer(export_app, name="export")
