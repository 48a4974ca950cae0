"""Copy a trained DAM (an arm of bench_dam.py: `--model OUT/ARM/model`) into the package as `dam-nano`, with its
model card.

    python benchmarks/bench_dam.py --write          # trains and measures the arms
    python benchmarks/bundle_dam_nano.py            # -> groundscope/models/bundled/dam-nano/

The card's numbers are read from benchmarks/results/dam_synth.json (what bench_dam.py measured) and copied to
results.json beside the weights (``{"bundled_arm": the arm of --model, "arms": {arm: numbers}}``); the examples
are the bundled model's own greedy descriptions of the demo image.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "groundscope" / "models" / "bundled" / "dam-nano"


def vlm_command(vlm: dict, out: str) -> str:
    """The `groundscope pretrain-vlm` command line that trained a base VLM, from its saved settings (for a
    dam-nano taken from git, the command that writes it)."""
    if "commit" in vlm:
        return f"python benchmarks/dam_nano_from_git.py {vlm['commit']} {out}"
    cmd = (f"groundscope pretrain-vlm --data {vlm['data']} --lm {vlm['lm']} --out {out} --steps {vlm['steps']}"
           + ("" if vlm["captions"] else " --no-captions")
           + (f" --image-size {vlm['image_size']}" if vlm.get("image_size", 128) != 128 else "")
           + (f" --lr {vlm['lr']:g}" if vlm.get("lr", 1e-3) != 1e-3 else "")
           + (f" --position-init {vlm['position_init']}" if vlm.get("position_init", "random") != "random" else "")
           + (f" --crop-mode {vlm['crop_mode']}" if vlm.get("crop_mode", "clamp") != "clamp" else ""))
    if vlm.get("vision_steps"):
        cmd += (f" --vision-steps {vlm['vision_steps']}"
                + (f" --vision-jitter {vlm['vision_jitter']}" if vlm.get("vision_jitter") else "")
                + (" --vision-flip" if vlm.get("vision_flip") else "")
                + (f" --vision-val {vlm['vision_val']}" if vlm.get("vision_val") else "")
                + (f" --vision-attributes {','.join(vlm['vision_attributes'])}"
                   if vlm.get("vision_attributes") else ""))
    # the tower's learning rate in the LLaVA stage: a setting of every run, vision stage or not
    cmd += f" --vision-lr-mult {vlm['vision_lr_mult']}" if vlm.get("vision_lr_mult", 1.0) != 1.0 else ""
    return cmd + (f" --vision-init {vlm['vision_init']}" if vlm.get("vision_init") else "")


def vlm_chain(base_vlm: str) -> list[tuple[str, dict, dict]]:
    """(folder, settings, summary) of the base VLM and of every run its tower came from (``--vision-init``),
    the earliest first. A tower from a dam-nano taken from git (dam_nano_from_git.py) ends the chain with its
    source.json as settings: that model's own card holds the runs before."""
    chain, source = [], base_vlm
    while source:
        if (ROOT / source / "source.json").exists():
            chain.insert(0, (source, json.loads((ROOT / source / "source.json").read_text()), {}))
            break
        log = json.loads((ROOT / source / "train_log.json").read_text())
        chain.insert(0, (source, log["config"], log["summary"]))
        source = log["config"].get("vision_init")
    return chain


def tower_size(source: str, settings: dict) -> int:
    """Input side (px) of the tower a chain entry trained: its settings, else (a dam-nano taken from git) its
    vision_tower/config.json."""
    if "image_size" in settings:
        return int(settings["image_size"])
    return int(json.loads((ROOT / source / "vision_tower" / "config.json").read_text())["image_size"])


def vision_runs_text(stages: list[tuple[str, dict, dict]], size_before: int | None) -> str:
    """'4000 steps of 64 crops of `X`, then ...' for the vision-stage runs of a chain; a run at another input
    size than the one before says so."""
    parts, size = [], size_before
    for source, cfg, _ in stages:
        here = tower_size(source, cfg)
        resized = (f" at {here} px, the position embedding resized from the {size}-px tower's grid"
                   if size is not None and here != size else "")
        parts.append(f"{cfg['vision_steps']} steps of {cfg['vision_batch_size']} crops of `{cfg['data']}`{resized}"
                     + (f", learning rate {cfg['lr']:g}" if cfg.get("lr", 1e-3) != 1e-3 else "")
                     + (", half of the crops mirrored left-right" if cfg.get("vision_flip") else "")
                     + (", square focal crops" if cfg.get("crop_mode", "clamp") == "square" else ""))
        size = here
    return ", then ".join(parts)


def tower_sentences(card: str) -> str | None:
    """What a dam-nano card says about its tower: the sentences of its "- Base VLM" bullet after the LLaVA stage's
    ("... training images."), the bullet's wrapped lines joined (None when there are none). A card that quoted
    its own source quotes it there too, so the history travels whole from card to card."""
    lines = card.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("- Base VLM")), None)
    if start is None:
        return None
    bullet = []
    for line in lines[start:]:
        if not line.strip():
            break
        bullet.append(line.strip())
    _, marker, after = " ".join(bullet).partition("training images.")
    return after.strip() or None if marker else None


def vision_stage_text(chain: list[tuple[str, dict, dict]], lr_mult: float) -> str:
    """The card's sentence on the tower's vision stages (empty when no run of the chain had one)."""
    here = ("Here the LLaVA stage keeps it frozen.\n" if lr_mult == 0
            else f"Here the LLaVA stage trains it at the learning rate x {lr_mult}.\n")
    source, first, _ = chain[0]
    stages = [entry for entry in chain if entry[1].get("vision_steps")]
    if stages:  # the last vision stage's heads and validation accuracy, and its jitter
        cfg, summary = stages[-1][1], stages[-1][2]
        heads = ["colour", "shape"] + list(cfg.get("vision_attributes") or [])
        val = summary.get("vision_val_accuracy")
        val = ("on the validation world's regions: " + ", ".join(f"{h} {v:.2f}" for h, v in zip(heads, val))
               if val else "")
        jitter = f"boxes jittered by up to {cfg['vision_jitter']:.0%}" if cfg.get("vision_jitter") else ""
    if "commit" in first:  # the tower of an earlier dam-nano: quote that card's words on how it was trained
        card = (ROOT / source / "README.md").read_text(encoding="utf-8")
        trained = tower_sentences(card)
        if trained is None:
            raise SystemExit(f"{source}/README.md does not say how its tower was trained (its '- Base VLM' bullet "
                             "has nothing after '... training images.')")
        frozen = "the vision tower frozen" in card
        text = (f"  The tower {'started as' if stages else 'is'} the one dam-nano shipped at commit {first['commit']}"
                + (" (its DAM stage kept it frozen: it is that base VLM's tower, in float16)" if frozen else
                   " (after that model's DAM stage)")
                + f". That card: \"{trained}\"")
        if stages:
            extra = "; ".join(e for e in (jitter, val) if e)
            text += (f" Then the tower alone went on for {vision_runs_text(stages, tower_size(source, first))}"
                     + (f" ({extra})" if extra else "") + ".")
        return f"{text} {here}"
    if not stages:
        return ""
    return (f"  First the tower alone ({vision_runs_text(stages, None)}"
            + (f"; {jitter}" if jitter else "")
            + ("; position embedding initialised as a 2-D sine-cosine grid"
               if any(c.get("position_init") == "sincos" for _, c, _ in stages) else "")
            + f") learns each region's {', '.join(heads[:-1])} and {heads[-1]} from the centre of its focal crop (a"
            " stand-in for SigLIP's own pretraining"
            + (f"; {val}" if val else "")
            + f"), then the LLaVA stage trains at the tower's learning rate x {lr_mult}.\n")


def synth_command(data: str) -> str | None:
    """The `groundscope synth` line of a training world other than data/synth_train (None for that one), from
    the world's meta.json; for a file holding only the first N images of the world's groundingcap.jsonl (a world
    is drawn image by image, so those are the world of N images), the `head` line that writes it too."""
    world = Path(data).parent
    if world.name == "synth_train":
        return None
    meta = json.loads((ROOT / world / "meta.json").read_text())
    line = (f"groundscope synth --out {world} --n {meta['images']} --seed {meta['seed']} --split {meta['split']} "
            "--regions")
    name = Path(data).name
    if name in ("groundingcap.jsonl", "regions.json"):
        return line
    with open(ROOT / data, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    return f"{line}\nhead -{n} {world}/groundingcap.jsonl > {data}"


def dam_stage(run_cfg: dict, arm: str = "full") -> tuple[str, list[str], str]:
    """The card's words on the DAM stage's trained parts and data, the bench_dam.py options that reproduce its
    settings (beyond --steps and what the `arm` sets itself) and its training regions.json, from the run's
    config.yaml."""
    sources = run_cfg["data"]["train"]
    sources = sources if isinstance(sources, list) else [sources]  # the saved config lists them
    if len(sources) != 1:
        raise SystemExit(f"the card describes a DAM trained on one world; this run read {len(sources)} sources")
    train_data = sources[0]["path"]
    frozen = run_cfg["model"].get("freeze") or []
    lora = run_cfg.get("dam", {}).get("lora")
    n_regions = len(json.loads((ROOT / train_data).read_text())["annotations"])
    n_images = json.loads((ROOT / Path(train_data).parent / "meta.json").read_text())["images"]
    vision_mult = run_cfg["optim"].get("backbone_lr_mult", 1.0)
    box_prob = run_cfg.get("dam", {}).get("box_prob", 0.0)
    parts = ["the projector", f"LoRA (r {lora['r']}) on the LM" if lora else "the whole LM"]
    if "backbone.vision" not in frozen:
        parts.append(f"the vision tower (learning rate x {vision_mult})")
    text = (f"{', '.join(parts[:-1])} and {parts[-1]} trained on the {n_regions:,} region descriptions of "
            f"{n_images:,} training images ({run_cfg['train']['max_steps']} steps)"
            + ("; the vision tower frozen" if "backbone.vision" in frozen else "")
            + (f"; in each epoch {box_prob:.0%} of the regions, drawn anew, given as their filled box instead of "
               "their mask, as `--box` and `--expression` give them" if box_prob else ""))
    opts = [] if Path(train_data) == Path("data/synth_train/regions.json") else [f"--train-data {train_data}"]
    opts += [] if "backbone.vision" in frozen else [f"--vision-lr-mult {vision_mult}"]
    opts += [] if lora else ["--set dam.lora=null"]
    opts += [] if box_prob == (0.5 if arm == "boxmix" else 0.0) else [f"--set dam.box_prob={box_prob}"]
    return text, opts, train_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/dam_bench/full/model")
    ap.add_argument("--results", default="benchmarks/results/dam_synth.json")
    a = ap.parse_args()
    import yaml

    run_cfg = yaml.safe_load((ROOT / a.model).parent.joinpath("config.yaml").read_text())
    base_vlm = run_cfg["model"]["path"]
    dam_steps = run_cfg["train"]["max_steps"]
    chain = vlm_chain(base_vlm)  # the base VLM last
    vlm = chain[-1][1]
    results = json.loads((ROOT / a.results).read_text())
    arm_of_model = Path(a.model).parent.name  # bench_dam.py's OUT/ARM/model
    if arm_of_model not in results:
        raise SystemExit(f"{a.results} has no row for the arm '{arm_of_model}' of {a.model}: run bench_dam.py with it")
    shutil.rmtree(DEST, ignore_errors=True)
    shutil.copytree(ROOT / a.model, DEST)
    (DEST / "results.json").write_text(json.dumps({"bundled_arm": arm_of_model, "arms": results}, indent=1) + "\n")
    size_mb = sum(f.stat().st_size for f in DEST.rglob("*") if f.is_file()) / 2**20

    import groundscope as gs

    example = json.loads((ROOT / "examples" / "synth_shapes.json").read_text())
    dam = gs.load_describer(str(DEST), device="cpu")
    from groundscope.evaluate.dlc import description_subject

    lines, colours, shapes = [], 0, 0
    for obj in example["objects"]:
        d = dam.describe(str(ROOT / "examples" / "synth_shapes.png"), box=obj["box"], temperature=0.0)
        lines.append(f"| {obj['name']} | `{','.join(str(int(v)) for v in obj['box'])}` | {d.text} |")
        colour, shape = obj["name"].split(" ", 1)
        words = description_subject(d.text).split()
        colours += colour in words
        shapes += shape in words
    n = len(example["objects"])

    keys = ["pos", "neg", "avg", "small_pos", "small_neg", "small_avg"]
    heads = ["Pos", "Neg", "Avg", "small Pos", "small Neg", "small Avg"]
    if any("box_pos" in r for r in results.values()):
        keys += ["box_pos", "box_avg"]
        heads += ["box Pos", "box Avg"]

    def row(arm: str) -> str:
        r = results[arm]
        return " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in keys)

    dam_text, dam_opts, dam_data = dam_stage(run_cfg, arm_of_model)
    vision_stage = vision_stage_text(chain, vlm.get("vision_lr_mult", 1.0))
    llava_data = ("focal crops -> region descriptions and whole images -> detailed captions" if vlm["captions"]
                  else "focal crops -> region descriptions")
    vlm_cmd = "\n".join(vlm_command(cfg, source) for source, cfg, _ in chain)
    worlds = [cfg["data"] for _, cfg, _ in chain if "data" in cfg] + [dam_data]
    extra_worlds = "".join(f"{line}\n" for line in dict.fromkeys(synth_command(w) for w in worlds) if line)
    base_bullet = (
        "Base VLM (the stand-in for DAM-3B's VILA-1.5), `groundscope pretrain-vlm`: a SigLIP vision tower trained "
        f"from scratch ({vlm['image_size']} px, patch {vlm['patch_size']}, width {vlm['hidden']}, {vlm['layers']} "
        "layers), DAM-3B's `mlp_downsample` projector (2x2 token merge + MLP), and the world LM (`groundscope "
        "pretrain-lm`: a 4-layer word-level Llama, 128 wide), trained LLaVA-style "
        f"({vlm['steps']} steps) on {llava_data} of 4000 training images.")
    square = (" Its focal crop departs from DAM's: a square of 3x the region's longer side, centred on the region "
              "and grey past the image's border (`--crop-mode square`), where DAM clamps the crop to the image and "
              "stretches it to the encoder's square input. The DAM stage and `describe` crop the same way (the mode "
              "is in the model's config)." if vlm.get("crop_mode", "clamp") == "square" else "")
    dam_bullet = ("DAM on top, `groundscope train configs/dam_nano.yaml`: the mask patch embedding and the gated "
                  f"context adapters (zero-initialised: step 0 is the base VLM), {dam_text}.")
    bullets = "\n\n".join(textwrap.fill(b, 116, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False)
                           for b in (base_bullet + (" " + vision_stage.strip() if vision_stage else ""),
                                     dam_bullet + square))
    missing = {arm: name for arm, name in (("nocrop", "the focal crop"), ("noadapt", "the context adapters"))
               if arm not in results}
    not_run = (textwrap.fill(f"Not measured for this bundle: DAM without {' or without '.join(missing.values())} "
                             f"(`bench_dam.py --arms {','.join(missing)}` trains it beside the others).", 116)
               + "\n\n") if missing else ""
    others = [(arm, name) for arm, name in (("full", "DAM trained on the exact masks"),
                                            ("boxmix", "DAM trained with half of the regions as their boxes"),
                                            ("nocrop", "DAM trained on the exact masks, without the focal crop"),
                                            ("noadapt", "DAM trained on the exact masks, without the context adapters"))
              if arm in results and arm != arm_of_model]
    table = "\n".join([f"| model | {' | '.join(heads)} |", "|---" * (len(heads) + 1) + "|",
                       f"| base VLM on the focal crop (DAM's start) | {row('base')} |",
                       f"| **dam-nano** | {row(arm_of_model)} |"]
                      + [f"| {name} | {row(arm)} |" for arm, name in others])
    arms_line = (f"dam-nano is bench_dam.py's `{arm_of_model}` arm. Every DAM row starts from the same base VLM and "
                 f"trains for the same {dam_steps} steps on the same regions.")
    box_line = (" The box columns give every region as its filled box instead of its mask: what `groundscope describe "
                "--box` and `--expression` send, as no segmenter ships with groundscope."
                if "box_pos" in keys else "")
    bench_cmd = " ".join(["python benchmarks/bench_dam.py", f"--arms {','.join(results)}", f"--base-vlm {base_vlm}",
                          f"--out {Path(a.model).parent.parent}", f"--steps {dam_steps}", *dam_opts, "--write"])
    card = f"""# dam-nano

Describe Anything (DAM) for the synthetic shapes world, small enough to ship inside the package ({size_mb:.1f} MB,
float16) and run offline: `groundscope describe examples/synth_shapes.png --model dam-nano --box X1,Y1,X2,Y2`.
It knows the synthetic world only (coloured shapes with a fill pattern on a plain or textured background).

## What it is

{bullets}

## Numbers

Synthetic DLC-Bench questions (colour, shape, pattern, size, one relation; negatives: a neighbour's colour and
an absent shape), answered by word rules from each description, on a test world drawn with a seed no training
or choice used (`python benchmarks/bench_dam.py`; small = box under 48x48 px):

{table}

{textwrap.fill(arms_line + box_line, 116)}

{not_run}Targets (issue 10): Pos >= 0.7 and Neg >= 0.8; the focal crop beats the full-image-only model on small objects.

## The demo image, described (greedy)

Of its {n} objects, the description's subject names the right colour for {colours} and the right shape for
{shapes}.

| object | box | description |
|---|---|---|
""" + "\n".join(lines) + f"""

## Reproduce

```bash
groundscope synth --out data/synth_train --n 4000 --seed 0 --split train --regions
groundscope synth --out data/synth_test --n 200 --seed 1 --split test --regions
{extra_worlds}groundscope pretrain-lm --data data/synth_train/groundingcap.jsonl --out runs/world_lm
{vlm_cmd}
{bench_cmd}
python benchmarks/bundle_dam_nano.py --model {a.model}
```
""" + ("""
A vision-stage run that names another LM than `runs/world_lm` uses it only for its vocabulary: the vision stage never
reads the LM, but the number of words the build adds to it decides how many random draws come before the tower's
initialisation, so the same vocabulary gives the same tower.
""" if any(cfg.get("vision_steps") and cfg["lm"] != "runs/world_lm" for _, cfg, _ in chain) else "")
    (DEST / "README.md").write_text(card, encoding="utf-8")
    print(card)


if __name__ == "__main__":
    main()
