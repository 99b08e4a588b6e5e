"""Byte-for-byte check across two revisions: the same build commands, the same shard sha256s.

Runs one set of ``fluorobench-c`` commands at two revisions of this repository (each in a
``git worktree`` of its own, or the working tree itself for ``--after .``) and compares
every file of the packages they write: shards, the reference U-Nets, the manifests'
sha256 lists. Each revision is run through the console script its own ``pyproject.toml``
declares, so a moved command line is followed.

The commands cover every config and every split family, attacks included, on three
sources/renderers:

- ``proc``: procedural masks, physics renderer, all three configs, all families;
- ``bbbc``: the nucleus config on the BBBC038 folder (``real`` split included);
- ``gauss``: the first-release Gaussian noise model, noise splits only;
- ``gan`` (``--gan``): the pix2pix renderer, with tiny weights trained once by the
  *before* revision on a folder source of bright discs, and given to both (weight files
  record training time, so they are made once). No attack splits here: the tiny GAN's
  test images are too flat to attack, and the attack code is the same for every renderer.

Usage::

    python benchmarks/same_bytes.py --before 148e2ec --after . [--gan] [--keep DIR]

Prints one line per package file that differs and a summary; exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.toy: the disc source the GAN check trains on
BBBC038 = ROOT.parent / "shared" / "data" / "bbbc038-fluorescence" / "stage1_train"
SMALL = ["--train", "6", "--validation", "2", "--test", "3", "--train-epochs", "1"]

#: name -> build arguments after OUT (all small, every family of every config).
BUILDS: dict[str, list[str]] = {
    "proc": [*SMALL, "--batch-size", "4"],
    "bbbc": ["--config", "nucleus", "--source", str(BBBC038), *SMALL],
    "gauss": ["--config", "mito", "--splits", "snr", "--noise-model", "gaussian", *SMALL],
}


def entry_point(tree: Path) -> tuple[str, str]:
    """(module, function) of the ``fluorobench-c`` script that ``tree`` declares."""
    scripts = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["fluorobench-c"].split(":")
    return module, func


def run_cli(tree: Path, args: list[str], log: Path) -> float:
    """Run ``fluorobench-c ARGS`` from ``tree``'s sources; return seconds taken."""
    module, func = entry_point(tree)
    code = f"import sys; from {module} import {func} as m; sys.exit(m(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ fluorobench-c {' '.join(args)}\n")
        f.flush()
        done = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=tree, env=env, stdout=f, stderr=f
        )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: fluorobench-c {' '.join(args)} failed; see {log}")
    return time.perf_counter() - t0


def checkout(rev: str, where: Path) -> Path:
    if rev == ".":
        return ROOT
    if where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)])
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    return where


def file_hashes(pkg: Path) -> dict[str, str]:
    """sha256 of every shard and model file of a package (card and reports excluded:
    they embed timings and the command line)."""
    out = {}
    for p in sorted(pkg.rglob("*")):
        rel = p.relative_to(pkg).as_posix()
        if p.is_file() and (rel.startswith("data/") or rel.endswith(".safetensors")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    manifest = json.loads((pkg / "manifest.json").read_text())
    for config, entry in manifest["configs"].items():
        for split, s in entry["splits"].items():
            for shard in s.get("shards", []):
                out[f"manifest:{config}/{split}:{shard['path']}"] = shard["sha256"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision (or . for the working tree)")
    ap.add_argument("--after", default=".", help="git revision (or . for the working tree)")
    ap.add_argument("--only", nargs="+", choices=[*BUILDS, "gan"], default=None)
    ap.add_argument("--gan", action="store_true", help="also the pix2pix renderer (slower)")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = ap.parse_args()
    if not BBBC038.is_dir():
        raise SystemExit(f"{BBBC038}: BBBC038 folder missing (needed for the bbbc build)")
    names = args.only or [*BUILDS, *(["gan"] if args.gan else [])]
    work = args.keep or Path(tempfile.mkdtemp(prefix="same-bytes-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    trees = {"before": checkout(args.before, work / "tree-before")}
    trees["after"] = checkout(args.after, work / "tree-after")
    builds = {name: BUILDS[name] for name in names if name in BUILDS}
    if "gan" in names:
        weights = work / "gan-weights"
        if not (weights / "done").exists():
            from tests.toy import disc_source

            discs = work / "discs"
            if not discs.exists():
                disc_source(discs)
            run_cli(
                trees["before"],
                ["train-synthesizer", "--config", "nucleus", "--source", str(discs)]
                + ["--out", str(weights), "--preset", "tiny", "--seed", "3", "--device", "cpu"],
                log,
            )
            (weights / "done").touch()
        builds["gan"] = ["--config", "nucleus", "--renderer", "gan", "--weights", str(weights)]
        builds["gan"] += ["--train", "2", "--validation", "1", "--test", "2"]
        builds["gan"] += ["--train-epochs", "1", "--splits", "reference", "snr", "sib", "svb"]
    differ = 0
    compared = 0
    for name, extra in builds.items():
        hashes = {}
        for side, tree in trees.items():
            pkg = work / f"{name}-{side}"
            if tree == ROOT and pkg.exists():
                shutil.rmtree(pkg)  # the working tree changes between runs: always rebuild
            # A kept package of a fixed revision is complete: the build command returns at once.
            seconds = run_cli(tree, ["build", str(pkg), "--device", "cpu", *extra], log)
            hashes[side] = file_hashes(pkg)
            print(f"{name:6s} {side:6s} {len(hashes[side]):4d} files/hashes  {seconds:6.1f} s")
        keys = sorted(set(hashes["before"]) | set(hashes["after"]))
        for k in keys:
            a, b = hashes["before"].get(k), hashes["after"].get(k)
            compared += 1
            if a != b:
                differ += 1
                print(f"DIFFERS {name} {k}: {a} -> {b}")
    print(f"{compared} file hashes compared, {differ} differ ({args.before} -> {args.after})")
    for side in ("before", "after"):
        if trees[side] != ROOT:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[side])],
                capture_output=True,
            )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
