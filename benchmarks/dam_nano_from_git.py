"""Write the dam-nano that was bundled at a git commit into a folder, to start a new base VLM's tower from it.

    python benchmarks/dam_nano_from_git.py d0dcdcc runs/dam_nano_d0dcdcc
    groundscope pretrain-vlm ... --vision-init runs/dam_nano_d0dcdcc --vision-lr-mult 0

The vision stages that train the tower from scratch take most of an hour on 2 CPU cores, and a DAM stage with a
frozen tower leaves the bundled model's tower exactly as its base VLM had it. So a new base VLM can start from the
bundled tower instead of training it again. The folder holds the model as it was at that commit (its README.md is
that model's card, with the chain that trained the tower) and `source.json` naming the commit;
`bundle_dam_nano.py` reads both to write the chain into the new card.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "groundscope/models/bundled/dam-nano"


def extract(rev: str, out: Path) -> str:
    """Write `BUNDLE` at commit `rev` into `out` (files directly under it); returns the commit's short hash."""
    git = ["git", "-C", str(ROOT)]
    found = subprocess.run(git + ["rev-parse", "--short=7", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode:
        raise SystemExit(f"'{rev}' is not a commit of {ROOT}; pass one that bundled dam-nano "
                         f"(git log --oneline -- {BUNDLE})")
    commit = found.stdout.strip()
    tar = subprocess.run(git + ["archive", "--format=tar", commit, BUNDLE], capture_output=True)
    if tar.returncode:
        raise SystemExit(f"commit {commit} holds no {BUNDLE}: {tar.stderr.decode().strip()}")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        for member in archive.getmembers():
            if member.isfile():
                dest = out / Path(member.name).relative_to(BUNDLE)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(archive.extractfile(member).read())
    (out / "source.json").write_text(json.dumps({"commit": commit, "path": BUNDLE}) + "\n")
    return commit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="a commit that bundled dam-nano, e.g. d0dcdcc")
    ap.add_argument("out", type=Path, help="the folder to write, e.g. runs/dam_nano_d0dcdcc")
    a = ap.parse_args()
    commit = extract(a.rev, a.out)
    print(f"dam-nano of commit {commit} -> {a.out}")


if __name__ == "__main__":
    main()
