"""``groundscope pretrain-vlm``: train the small base VLM that DAM fine-tuning starts from
(`groundscope.train.base_vlm`).

    groundscope pretrain-vlm --data data/synth_train/groundingcap.jsonl --lm runs/world_lm --out runs/base_vlm

Exit codes: 0 done, 2 bad arguments or data (one line naming the problem), 130 interrupted by Ctrl-C (nothing
is saved).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from groundscope.cli.common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``pretrain-vlm`` command to `app`."""

    @app.command("pretrain-vlm")
    def pretrain_vlm_cmd(
        data: Path = typer.Option(..., "--data", help="A synthetic world's groundingcap.jsonl: region boxes with "
                                                      "descriptions, images with detailed captions."),
        lm: Path = typer.Option(Path("runs/world_lm"), "--lm", help="The world LM folder (groundscope pretrain-lm)."),
        out: Path = typer.Option(Path("runs/base_vlm"), "--out", "-o", help="Folder for the base VLM (VILA layout)."),
        steps: int = typer.Option(3000, "--steps", min=1, help="Optimizer steps (3000: ~18 min on 2 CPU cores)."),
        batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Samples per step."),
        lr: float = typer.Option(1e-3, "--lr", min=0.0, help="Peak learning rate of the vision model and projector."),
        llm_lr_mult: float = typer.Option(0.3, "--llm-lr-mult", min=0.0, help="LM learning rate = this x --lr."),
        captions: bool = typer.Option(True, "--captions/--no-captions",
                                      help="Also train whole images -> detailed captions."),
        image_size: int = typer.Option(128, "--image-size", min=16, help="Vision input side (multiple of --patch)."),
        patch: int = typer.Option(16, "--patch", min=2, help="ViT patch size."),
        hidden: int = typer.Option(192, "--hidden", min=8, help="ViT width."),
        layers: int = typer.Option(4, "--layers", min=1, help="ViT layers."),
        heads: int = typer.Option(4, "--heads", min=1, help="ViT attention heads (must divide --hidden)."),
        position_init: str = typer.Option("random", "--position-init",
                                          help="random (SigLIP's init) or sincos (2-D sine-cosine init of the "
                                               "position embedding: a from-scratch tower learns shapes faster)."),
        crop_mode: str = typer.Option("clamp", "--crop-mode",
                                      help="clamp (DAM's focal crop: clamped to the image, then stretched to the "
                                           "square input) or square (centred on the region, padded past the "
                                           "border: no region is stretched or off-centre). Kept in the model's "
                                           "config: the DAM trained from it crops the same way."),
        projector: str = typer.Option("mlp_downsample", "--projector",
                                      help="mlp_downsample (2x2 token merge, DAM-3B's) or mlp2x_gelu."),
        max_text_tokens: int = typer.Option(320, "--max-text-tokens", min=16, help="Text tokens kept per sample."),
        warmup: Optional[int] = typer.Option(None, "--warmup", min=1, help="Warm-up steps (default 10 %, <= 100)."),
        seed: int = typer.Option(0, "--seed", help="Seed of initialisation and sample order."),
        vision_steps: int = typer.Option(0, "--vision-steps", min=0,
                                         help="First pretrain the vision tower this many steps on the regions' "
                                              "categories (stands in for SigLIP's own pretraining): one head per "
                                              "word of the category (colour, shape)."),
        vision_batch_size: int = typer.Option(64, "--vision-batch-size", min=1, help="Crops per vision step."),
        vision_jitter: float = typer.Option(0.0, "--vision-jitter", min=0.0, max=1.0,
                                            help="Jitter each region's box by up to this share of its size "
                                                 "before cropping (vision stage; 0 = the exact crops)."),
        vision_flip: bool = typer.Option(False, "--vision-flip",
                                         help="Mirror a random half of the vision stage's crops left-right "
                                              "(the synthetic world's shapes and patterns survive a mirror)."),
        vision_val: Optional[Path] = typer.Option(None, "--vision-val",
                                                  help="Another world's groundingcap.jsonl: its regions are scored "
                                                       "by the vision stage's heads every 250 steps."),
        vision_lr_mult: float = typer.Option(1.0, "--vision-lr-mult", min=0.0,
                                             help="Vision tower learning rate in the LLaVA stage = this x --lr "
                                                  "(low keeps what the vision stage taught)."),
        vision_attributes: str = typer.Option("", "--vision-attributes",
                                              help="Comma-separated region attributes the vision stage also "
                                                   "learns, one head each (the synthetic world's 'texture': "
                                                   "descriptions state the fill pattern)."),
        vision_init: Optional[Path] = typer.Option(None, "--vision-init",
                                                   help="A base VLM folder whose vision tower this one starts "
                                                        "from (same patch, width, layers, heads), e.g. to teach it "
                                                        "one more attribute; a tower of another --image-size has "
                                                        "its position embedding resized."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    ) -> None:
        """Train a small base VLM (SigLIP + projector + world LM) to describe synthetic-world crops and images."""
        from groundscope.data import DataFormatError
        from groundscope.describe import DamError
        from groundscope.describe.focal import CROP_MODES
        from groundscope.train.base_vlm import POSITION_INITS, pretrain_base_vlm

        if (out / "config.json").exists() and not overwrite:
            raise fail(f"'{out}' already holds a model; pass --overwrite or choose another --out", 2)
        if projector not in ("mlp_downsample", "mlp2x_gelu"):
            raise fail(f"--projector must be mlp_downsample or mlp2x_gelu, not {projector!r}", 2)
        if crop_mode not in CROP_MODES:
            raise fail(f"--crop-mode must be {' or '.join(CROP_MODES)}, not {crop_mode!r}", 2)
        if position_init not in POSITION_INITS:  # before any data is read
            raise fail(f"--position-init must be {' or '.join(POSITION_INITS)}, not {position_init!r}", 2)
        try:
            summary = pretrain_base_vlm(
                data, lm, out, steps=steps, batch_size=batch_size, lr=lr, llm_lr_mult=llm_lr_mult, captions=captions,
                image_size=image_size, patch_size=patch, hidden=hidden, layers=layers, heads=heads,
                projector=projector, position_init=position_init, crop_mode=crop_mode,
                max_text_tokens=max_text_tokens, warmup=warmup,
                seed=seed, console=console,
                vision_steps=vision_steps, vision_batch_size=vision_batch_size, vision_jitter=vision_jitter,
                vision_flip=vision_flip, vision_val=vision_val, vision_lr_mult=vision_lr_mult,
                vision_attributes=[a.strip() for a in vision_attributes.split(",") if a.strip()],
                vision_init=vision_init)
        except (DataFormatError, DamError, ValueError) as e:
            raise fail(str(e), 2)
        except KeyboardInterrupt:
            raise fail("interrupted; nothing saved", 130)
        console.print(
            f"done: {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['seconds_per_step']:.2f} s/step), "
            f"loss {summary['first_loss']:.3f} -> {summary['last_loss_mean']:.3f}, {summary['params']:,} parameters "
            f"({summary['megabytes_fp16']} MB in fp16), {summary['vocab_added']} words added to the LM; base VLM in "
            f"{out}", highlight=False)
