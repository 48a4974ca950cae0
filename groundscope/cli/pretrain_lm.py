"""``groundscope pretrain-lm``: pretrain the tiny world language model (`groundscope.train.world_lm`).

    groundscope pretrain-lm --data data/synth_train/groundingcap.jsonl --out runs/world_lm [--steps N ...]

Exit codes: 0 done, 2 bad arguments or data (one line naming the problem), 130 interrupted by Ctrl-C
(nothing is saved: the run is a few minutes, start it again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from groundscope.cli.common import console, fail


def register(app: typer.Typer) -> None:
    """Add the ``pretrain-lm`` command to `app`."""

    @app.command("pretrain-lm")
    def pretrain_lm_cmd(
        data: Path = typer.Option(..., "--data", help="A synthetic world's groundingcap.jsonl (captions, phrases, "
                                                      "region descriptions are the training text)."),
        out: Path = typer.Option(Path("runs/world_lm"), "--out", "-o",
                                 help="Folder for the model, tokenizer and train_log.json."),
        steps: int = typer.Option(1500, "--steps", min=1, help="Optimizer steps."),
        batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Token blocks per step."),
        lr: float = typer.Option(2e-3, "--lr", min=0.0, help="Peak learning rate (warm-up, then cosine to 10 %)."),
        seq_len: int = typer.Option(384, "--seq-len", min=2, help="Tokens per block (documents are packed)."),
        hidden: int = typer.Option(128, "--hidden", min=8, help="Model width."),
        layers: int = typer.Option(4, "--layers", min=1, help="Transformer layers."),
        heads: int = typer.Option(4, "--heads", min=1, help="Attention heads (must divide --hidden)."),
        warmup: Optional[int] = typer.Option(None, "--warmup", min=1, help="Warm-up steps (default 10 %, <= 100)."),
        seed: int = typer.Option(0, "--seed", help="Seed of initialisation and document order."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
        instructions: bool = typer.Option(True, "--instructions/--plain", help="Train on the caption head's two "
                                          "tasks in its prompt format (default), or on the plain sentences."),
    ) -> None:
        """Pretrain a small causal LM (Llama architecture) on a synthetic world's text: LLMDet's caption writer."""
        from groundscope.data import DataFormatError
        from groundscope.train.world_lm import generate_text, pretrain_world_lm, world_texts

        if (out / "config.json").exists() and not overwrite:
            raise fail(f"'{out}' already holds a model; pass --overwrite or choose another --out", 2)
        if hidden % heads:
            raise fail(f"--hidden ({hidden}) must be divisible by --heads ({heads})", 2)
        try:
            prompts = None
            if instructions:
                from groundscope.models.captioner import CaptionHeadConfig

                defaults = CaptionHeadConfig(llm="-", d_model=1)
                prompts = (defaults.image_prompt, defaults.region_prompt)
            texts = world_texts(data, prompts)
        except DataFormatError as e:
            raise fail(str(e), 2)
        if not texts:
            raise fail(f"'{data}' holds no captions, phrases or descriptions to train on", 2)
        console.print(f"{len(texts):,} texts from {data}", highlight=False)
        try:
            summary = pretrain_world_lm(texts, out, steps=steps, batch_size=batch_size, lr=lr, seq_len=seq_len,
                                        seed=seed, hidden=hidden, layers=layers, heads=heads, warmup=warmup,
                                        console=console)
        except ValueError as e:
            raise fail(str(e), 2)
        except KeyboardInterrupt:
            raise fail("interrupted; nothing saved", 130)
        console.print(
            f"done: {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['steps_per_s']:.2f} steps/s), "
            f"loss {summary['first_loss']:.3f} -> {summary['last_loss_mean']:.3f}, {summary['params']:,} parameters, "
            f"vocabulary {summary['vocab_size']}; model in {out}", highlight=False)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        sample = generate_text(model, tokenizer, max_new_tokens=120)
        console.print(f"sample: {escape(sample)}", highlight=False, soft_wrap=True)
