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

import io
import os
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import pyarrow.parquet as pq
import tifffile
import torch
from _common import emit, timed


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


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--config", default="mito")
    p.add_argument("--train", type=int, default=16)
    p.add_argument("--validation", type=int, default=4)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--splits", nargs="+", default=["reference", "clean", "snr", "sib", "svb"])
    _common.add_device(p, None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--read-split", default="snr_2")
    _common.add_json(p)
    args = p.parse_args()

    from builder.assembly.pipeline import BuildOptions, build

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
        t_direct, n_direct = timed(lambda: direct_read(files, None), 3)
        t_ds, n_ds = timed(lambda: datasets_read(full), 3)
        t_col, n_col = timed(lambda: collate_read(lean), 3)
        t_dlean, _ = timed(lambda: direct_read(files, ["id", "image", "mask"]), 3)
        t_lean, n_lean = timed(lambda: datasets_read(lean), 3)
    assert n_direct == n_ds == n_col == n_lean, (n_direct, n_ds, n_col, n_lean)
    result = {
        "machine": _common.machine(),
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
    emit(result, args.json, lambda r: report(r, args.splits))


def report(result: dict, splits: list[str]) -> None:
    b, r = result["build"], result["read"]
    print(f"machine: {result['machine']}")
    print(
        f"build: {b['rows']} images in {b['seconds']:.1f} s = {b['images_per_s']:.1f} images/s "
        f"({result['config']}, {splits})"
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
