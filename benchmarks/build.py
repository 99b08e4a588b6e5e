"""End-to-end build throughput, and read throughput through `datasets` vs a direct read.

Builds a benchmark on the embedded default (procedural masks) into a temporary folder and
reports images written per second; then reads one split three ways in the same run:

- baseline: pyarrow + tifffile directly on the shards (no `datasets`);
- `datasets` streaming, numpy format (what `fluorobench_c.load` returns);
- `datasets` streaming + `fluorobench_c.collate` into float32 torch batches.

Target (issue 2): streaming through `datasets` at >= 0.5x the direct read.

    python benchmarks/build.py [--config mito] [--test 64] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def direct_read(files: list[Path], columns: list[str] | None) -> int:
    """The same work without `datasets`: the rows' columns, image and mask decoded."""
    from PIL import Image

    n = 0
    for f in files:
        for row in pq.read_table(f, columns=columns).to_pylist():
            img = tifffile.imread(io.BytesIO(row["image"]["bytes"]))
            mask = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"])))
            n += int(img.shape[0] == mask.shape[0])
    return n


def datasets_read(ds) -> int:
    return sum(int(row["image"].shape[0] == row["mask"].shape[0]) for row in ds)


def collate_read(ds, batch_size: int = 32) -> int:
    import fluorobench_c

    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, collate_fn=fluorobench_c.collate
    )
    return sum(b["image"].shape[0] for b in loader)


def timed(fn, *args, repeat: int = 3) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="mito")
    p.add_argument("--train", type=int, default=16)
    p.add_argument("--validation", type=int, default=4)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--splits", nargs="+", default=["reference", "clean", "snr", "sib", "svb"])
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--read-split", default="snr_2")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from builder.build import BuildOptions, build

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fluorobench-c"
        opts = BuildOptions(
            out=out,
            configs=[args.config],
            splits=args.splits,
            counts={"train": args.train, "validation": args.validation, "test": args.test},
            device=args.device,
            batch_size=args.batch_size,
        )
        t0 = time.perf_counter()
        manifest = build(opts)
        build_s = time.perf_counter() - t0
        splits = manifest["configs"][args.config]["splits"]
        rows = sum(s["num_rows"] for s in splits.values() if not s.get("alias_of"))
        files = [out / s["path"] for s in splits[args.read_split]["shards"]]
        import fluorobench_c

        t0 = time.perf_counter()
        full = fluorobench_c.load(out, args.config, args.read_split)
        setup_s = time.perf_counter() - t0  # resolving the card's data files, once per load
        lean = fluorobench_c.load(
            out, args.config, args.read_split, columns=["id", "image", "mask"]
        )
        t_direct, n_direct = timed(direct_read, files, None)
        t_ds, n_ds = timed(datasets_read, full)
        t_col, n_col = timed(collate_read, lean)
        t_dlean, _ = timed(direct_read, files, ["id", "image", "mask"])
        t_lean, n_lean = timed(datasets_read, lean)
    assert n_direct == n_ds == n_col == n_lean, (n_direct, n_ds, n_col, n_lean)
    result = {
        "machine": machine(),
        "config": args.config,
        "build": {"rows": rows, "seconds": build_s, "images_per_s": rows / build_s},
        "read": {
            "split": args.read_split,
            "rows": n_direct,
            "direct_images_per_s": n_direct / t_direct,
            "datasets_numpy_images_per_s": n_ds / t_ds,
            "datasets_collate_images_per_s": n_col / t_col,
            "ratio_datasets_vs_direct": t_direct / t_ds,
            "direct_lean_images_per_s": n_lean / t_dlean,
            "datasets_lean_images_per_s": n_lean / t_lean,
            "ratio_lean_vs_direct_lean": t_dlean / t_lean,
            "ratio_collate_lean_vs_direct_lean": t_dlean / t_col,
            "load_setup_s": setup_s,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result["read"]
    print(f"machine: {result['machine']}")
    print(
        f"build: {rows} images in {build_s:.1f} s = {rows / build_s:.1f} images/s ({args.config}, {args.splits})"
    )
    print(
        f"read {r['split']} ({r['rows']} rows); load() setup {r['load_setup_s']:.2f} s once, then:"
    )
    print(
        f"  all columns:   direct pyarrow+tifffile+PIL {r['direct_images_per_s']:.0f} img/s, "
        f"datasets streaming numpy {r['datasets_numpy_images_per_s']:.0f} img/s: "
        f"ratio {r['ratio_datasets_vs_direct']:.2f}x (target >= 0.5x)"
    )
    print(
        f"  id+image+mask: direct {r['direct_lean_images_per_s']:.0f} img/s, datasets "
        f"{r['datasets_lean_images_per_s']:.0f} img/s: ratio {r['ratio_lean_vs_direct_lean']:.2f}x; "
        f"+ collate to torch batches {r['datasets_collate_images_per_s']:.0f} img/s: "
        f"ratio {r['ratio_collate_lean_vs_direct_lean']:.2f}x"
    )


if __name__ == "__main__":
    main()
