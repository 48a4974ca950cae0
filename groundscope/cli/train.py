"""``groundscope train`` and ``groundscope build-nano``: the training commands, added to the main app by `register`.

    groundscope train CONFIG.yaml [--resume] [--checkpoint FILE] [--out DIR] [--set key.path=value ...] [--nproc N]
    torchrun --nproc-per-node N -m groundscope.cli train CONFIG.yaml ...      # joins torchrun's process group
    groundscope build-nano OUT_DIR [--text-layers 3] [--vocab-size 8192] [--dtype float16] [--seed 0]
    groundscope build-nano OUT_DIR --extend MODEL_DIR    # a copy of MODEL_DIR whose vocabulary covers synth_words()

Exit codes: 0 finished, 2 bad config / arguments / data / model (one line naming the problem), 1 training
failed, 130 interrupted by Ctrl-C after saving a checkpoint (continue with ``--resume``).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from groundscope.cli.common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``build-nano`` commands to `app`."""

    @app.command("train")
    def train_cmd(
        config: Path = typer.Argument(..., help="YAML training config (see configs/ for examples)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt (a fresh start "
                                    "while there is none: rerun the same command after any crash)."),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Continue from this checkpoint file."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (overrides train.out_dir)."),
        overrides: Optional[list[str]] = typer.Option(
            None, "--set", help="Override a config key: --set train.max_steps=500 --set optim.lr=2e-4 "
                                "(dotted path, YAML value; repeatable). The run's config.yaml records the result."),
        nproc: int = typer.Option(1, "--nproc", min=1,
                                  help="Training processes (data parallel: gloo on CPUs, NCCL on GPUs, one GPU each); "
                                       "train.batch_size is per process. Under torchrun, leave it out."),
    ) -> None:
        """Fine-tune a detector (or train one from scratch), or Describe Anything (task: dam), as CONFIG says."""
        from groundscope.data import DataFormatError
        from groundscope.images import ImageLoadError
        from groundscope.models.loading import ModelLoadError
        from groundscope.train.config import ConfigError, load_config
        from groundscope.train.data import TrainDataError
        from groundscope.describe import DamError
        from groundscope.train import distributed
        from groundscope.train.loop import TrainError, resolve_device
        from groundscope.train.trainers import build_trainer, train

        launched = distributed.torchrun_env()
        rank = launched.rank if launched else 0
        try:
            cfg = load_config(config, overrides or ())
            start = checkpoint if checkpoint is not None else resume
            device = resolve_device(cfg.model.device)
            if launched is not None and launched.world_size > 1:
                if nproc not in (1, launched.world_size):
                    raise fail(f"--nproc {nproc}: torchrun started {launched.world_size} processes; leave --nproc "
                                "out under torchrun", 2)
                device = distributed.process_device(device, launched)
                summary = distributed.run_in_group(train, cfg, out, start, device=device, proc=launched)
            elif nproc > 1:
                summary = distributed.launch(train, nproc, cfg, out, start, device=device)
            else:
                summary = build_trainer(cfg, out, console=console).fit(resume=start)
        except (ConfigError, ModelLoadError, DataFormatError, TrainDataError, DamError) as e:
            raise fail(str(e), 2)
        except (TrainError, ImageLoadError, distributed.DistributedError) as e:
            raise fail(str(e), 1)
        except KeyboardInterrupt:
            raise fail("aborted by a second Ctrl-C; the last saved checkpoint is unchanged", 130)
        if rank != 0:
            raise typer.Exit(130 if summary["interrupted"] else 0)  # rank 0 reports for the group
        if summary["interrupted"]:
            console.print(
                f"interrupted at step {summary['step']}/{summary['max_steps']}; checkpoint {summary['checkpoint']}; "
                f"continue with: groundscope train {config} --resume" + (f" --out {out}" if out else "")
                + "".join(f" --set {shlex.quote(o)}" for o in overrides or ())
                + (f" --nproc {nproc}" if nproc > 1 else ""),
                highlight=False,
            )
            raise typer.Exit(130)
        console.print(f"done: {summary['step']} steps in {summary['seconds']:.0f} s; model in {summary['model_dir']}",
                      highlight=False)

    @app.command("build-nano")
    def build_nano_cmd(
        out_dir: Path = typer.Argument(..., help="Folder for the new model (config, weights, tokenizer)."),
        text_layers: int = typer.Option(3, "--text-layers", min=1, max=6, help="MiniLM layers kept."),
        vocab_size: int = typer.Option(8192, "--vocab-size", min=0,
                                       help="Word pieces kept (0 = all 30,522; more than 25 MB then)."),
        dtype: str = typer.Option("float16", "--dtype", help="Storage dtype: float16 or float32."),
        shortest: int = typer.Option(320, "--shortest", min=32, help="Shortest resize edge."),
        longest: int = typer.Option(512, "--longest", min=32, help="Longest resize edge."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random initialisation."),
        backbone: str = typer.Option("swin", "--backbone", help="Image backbone: swin or convnext."),
        extend: Optional[Path] = typer.Option(
            None, "--extend", help="Instead of a new model: copy this trained nano and add MiniLM's pieces of the "
                                   "words its pruned vocabulary lacks (the training paraphrases); other options "
                                   "are ignored."),
    ) -> None:
        """Create the nano MM-Grounding-DINO (random vision, pretrained MiniLM text) to train from scratch."""
        from groundscope.train.nano import build_nano, extend_vocabulary, weight_report

        if extend is not None:
            try:
                added = extend_vocabulary(extend, out_dir)
            except (ImportError, ValueError, OSError) as e:
                raise fail(f"--extend {extend}: {e}", 2)
            report = weight_report(out_dir)
            console.print(f"{out_dir}: {extend} with {len(added)} word pieces added, {report['megabytes']} MB",
                          highlight=False, soft_wrap=True)
            return
        if dtype not in ("float16", "float32", "bfloat16"):
            raise fail(f"--dtype must be float16, bfloat16 or float32, not {dtype!r}", 2)
        try:
            path = build_nano(out_dir, image_size=(shortest, longest), text_layers=text_layers,
                              vocab_size=vocab_size or None, dtype=dtype, seed=seed, backbone=backbone)
        except (ImportError, ValueError) as e:
            raise fail(str(e), 2)
        report = weight_report(path)
        console.print(f"nano model in {path}: {report['parameters']:,} parameters, {report['megabytes']} MB",
                      highlight=False)
