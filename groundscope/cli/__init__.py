"""`groundscope <verb>`: the command-line entry point.

The CLI parses arguments, loads inputs (reporting bad ones by name and carrying on), calls the Python API and
writes files; it never touches tensors. Each verb group is a module of this package (`detect`, `data`,
`groundingcap`, `train`, `pretrain_lm`, `pretrain_vlm`, `describe`, `distill`, `label`, `serve`, `export`, `track`,
`evaluate` with `dlc`) that imports `groundscope.cli.common` and the task packages, never another verb module.
Exit codes: 0 all done, 1 some inputs failed, 2 bad arguments or model.

    torchrun --nproc-per-node N -m groundscope.cli train CONFIG.yaml    # `python -m groundscope.cli` works too
"""

from __future__ import annotations

import typer

from groundscope.cli import (
    data,
    describe,
    detect,
    distill,
    dlc,
    evaluate,
    export,
    groundingcap,
    label,
    pretrain_lm,
    pretrain_vlm,
    serve,
    track,
    train,
)

app = typer.Typer(
    name="groundscope",
    help="Find and describe anything in images from free text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

detect.register(app)
data.register(app)
groundingcap.register(app)
train.register(app)
pretrain_lm.register(app)
pretrain_vlm.register(app)
describe.register(app)
distill.register(app)
label.register(app)
serve.register(app)
export.register(app)
track.register(app)
dlc.register(evaluate.eval_app)
app.add_typer(evaluate.eval_app, name="eval")


def main() -> None:
    app()
