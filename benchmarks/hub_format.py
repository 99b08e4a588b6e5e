"""The Parquet layout of issue 14: size, streaming read speed, viewer previews, deduplication.

Compares two packages built by the same command, one before the change (plain Parquet:
images dictionary-encoded, no content-defined chunking, no page index; 8-bit PNG masks, no
preview) and one after (``builder.package.shards``), in the same run:

- **size**: bytes of every shard, and the share of the ``preview`` column (its column chunks'
  compressed sizes over the file sizes);
- **streaming read**: rows per second through ``fluorobench_c.load`` (numpy format, every
  column) over every split of one config, best of ``--repeats``, interleaved; also the model
  columns only (``MODEL_COLUMNS``);
- **deduplication after changing one split**: each shard of both packages is cut into chunks
  by a gear-hash content-defined chunker of the kind Xet storage uses (64 KiB target, 8 KiB
  minimum, 128 KiB maximum; hand-written here with Numba, as no Xet server is available),
  then one split is changed as a rebuild would change it (one image of a shard replaced, or
  the first row dropped so every later row shifts) and re-written with each layout; the
  figure is the share of the new file's bytes found in chunks the old upload already holds.

    python benchmarks/hub_format.py --before /tmp/pkg-before --after /tmp/pkg-after [--json]
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import _common
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import emit
from numba import njit

TARGET, MIN_CHUNK, MAX_CHUNK = 64 * 1024, 8 * 1024, 128 * 1024


def _gear_table() -> np.ndarray:
    return np.random.default_rng(20_260_904).integers(0, 2**63, 256, dtype=np.uint64)


@njit(cache=True)
def _cut(buf: np.ndarray, table: np.ndarray, mask: np.uint64, lo: int, hi: int) -> np.ndarray:
    ends = []
    h = np.uint64(0)
    start = 0
    for i in range(buf.shape[0]):
        h = (h << np.uint64(1)) + table[buf[i]]
        size = i + 1 - start
        if (size >= lo and (h & mask) == 0) or size >= hi:
            ends.append(i + 1)
            start = i + 1
            h = np.uint64(0)
    if start < buf.shape[0]:
        ends.append(buf.shape[0])
    return np.array(ends, dtype=np.int64)


def chunk_bounds(data: bytes) -> list[int]:
    """End offsets of the gear-hash chunks of ``data``."""
    mask = np.uint64((TARGET - 1) << 48)  # 16 high bits: one cut per 64 KiB on average
    buf = np.frombuffer(data, dtype=np.uint8)
    return [int(e) for e in _cut(buf, _gear_table(), mask, MIN_CHUNK, MAX_CHUNK)]


def chunks(data: bytes) -> dict[str, int]:
    out, start = {}, 0
    for end in chunk_bounds(data):
        out[hashlib.sha256(data[start:end]).hexdigest()] = end - start
        start = end
    return out


def dedup_share(old: bytes, new: bytes) -> float:
    known = chunks(old)
    got = chunks(new)
    return sum(n for h, n in got.items() if h in known) / max(1, len(new))


def plain_bytes(table: pa.Table) -> bytes:
    """The layout before issue 14 (``pq.write_table`` defaults, 32-row groups, no compression)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=32, compression="none")
    return buf.getvalue().to_pybytes()


def shards(pkg: Path) -> list[Path]:
    return sorted((pkg / "data").rglob("*.parquet"))


def column_share(paths: list[Path], column: str) -> float:
    col = total = 0
    for p in paths:
        md = pq.ParquetFile(p).metadata
        total += p.stat().st_size
        for rg in range(md.num_row_groups):
            group = md.row_group(rg)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".")[0] == column:
                    col += chunk.total_compressed_size
    return col / max(total, 1)


def read_rate(pkg: Path, config: str, columns: tuple[str, ...] | None) -> tuple[float, int]:
    import fluorobench_c

    manifest = json.loads((pkg / "manifest.json").read_text())
    rows = 0
    t = time.perf_counter()
    for split, entry in manifest["configs"][config]["splits"].items():
        if entry.get("alias_of"):
            continue
        for row in fluorobench_c.load(pkg, config, split, columns=columns):
            rows += 1
            assert row["image"].shape
    return rows / (time.perf_counter() - t), rows


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--config", default="mito")
    p.add_argument("--split", default="snr_2", help="the split changed for the dedup figures")
    _common.add_repeats(p, 3)
    _common.add_json(p)
    args = p.parse_args()
    import fluorobench_c
    from builder.package.features import row_features
    from builder.package.shards import parquet_bytes

    result: dict = {"machine": _common.machine(torch_version=False)}
    size = {}
    for name, pkg in (("before", args.before), ("after", args.after)):
        files = shards(pkg)
        size[name] = {
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "preview_share": column_share(files, "preview"),
            "mask_share": column_share(files, "mask"),
            "page_index": pq.ParquetFile(files[0]).metadata.row_group(0).column(0).has_offset_index,
        }
    size["ratio_after_before"] = size["after"]["bytes"] / size["before"]["bytes"]
    result["size"] = size

    rates: dict = {"before": [], "after": [], "before_model": [], "after_model": []}
    for _ in range(args.repeats):  # interleaved, best of N
        for name, pkg in (("before", args.before), ("after", args.after)):
            rates[name].append(read_rate(pkg, args.config, None)[0])
            rates[f"{name}_model"].append(
                read_rate(pkg, args.config, fluorobench_c.MODEL_COLUMNS)[0]
            )
    best = {k: max(v) for k, v in rates.items()}
    result["read_rows_per_s"] = {
        **best,
        "ratio_after_before": best["after"] / best["before"],
        "ratio_model_columns": best["after_model"] / best["before_model"],
    }

    raw = {}
    for name, pkg in (("before", args.before), ("after", args.after)):
        files = shards(pkg)
        nbytes = sum(f.stat().st_size for f in files)
        best_s = _common.best_of(lambda fs=files: [pq.read_table(f) for f in fs], args.repeats)
        raw[name] = nbytes / best_s / 1e6
    result["parquet_read_mb_per_s"] = {**raw, "ratio_after_before": raw["after"] / raw["before"]}

    features = row_features(args.config)
    dedup = {}
    for name, pkg, write in (
        ("before", args.before, plain_bytes),
        ("after", args.after, lambda t: parquet_bytes(t, features)),
    ):
        path = sorted((pkg / "data" / args.config).glob(f"{args.split}-*.parquet"))[0]
        table = pq.read_table(path)
        old = write(table)
        other = pq.read_table(sorted((pkg / "data" / args.config).glob("snr_1-*.parquet"))[0])
        rows = table.to_pylist()
        replaced = rows[:1] + [{**rows[1], "image": other.slice(1, 1).to_pylist()[0]["image"]}]
        replaced += rows[2:]
        shifted = rows[1:]
        dedup[name] = {
            "rewrite_same_rows": dedup_share(old, write(table)),
            "one_image_replaced": dedup_share(
                old, write(pa.Table.from_pylist(replaced, table.schema))
            ),
            "first_row_dropped": dedup_share(
                old, write(pa.Table.from_pylist(shifted, table.schema))
            ),
            "shard_bytes": len(old),
        }
    total = size["after"]["bytes"]
    changed = sum(
        f.stat().st_size
        for f in (args.after / "data" / args.config).glob(f"{args.split}-*.parquet")
    )
    dedup["package_after_one_split_changed"] = {
        name: (total - changed + changed * dedup[name]["one_image_replaced"]) / total
        for name in ("before", "after")
    }
    result["dedup"] = dedup

    def report(r: dict) -> None:
        print(r["machine"])
        s = r["size"]
        for n in ("before", "after"):
            print(
                f"{n}: {s[n]['files']} shards, {s[n]['bytes'] / 1e6:.1f} MB, preview "
                f"{100 * s[n]['preview_share']:.1f}% of it, masks {100 * s[n]['mask_share']:.2f}%, "
                f"page index {s[n]['page_index']}"
            )
        print(f"size after/before: {s['ratio_after_before']:.3f}")
        rr = r["read_rows_per_s"]
        print(
            f"streaming read ({args.config}, all columns): before {rr['before']:.0f} rows/s, "
            f"after {rr['after']:.0f} rows/s, ratio {rr['ratio_after_before']:.2f}; model "
            f"columns only: {rr['before_model']:.0f} -> {rr['after_model']:.0f} rows/s "
            f"(ratio {rr['ratio_model_columns']:.2f})"
        )
        pr = r["parquet_read_mb_per_s"]
        print(
            f"pyarrow read of every shard: before {pr['before']:.0f} MB/s, after "
            f"{pr['after']:.0f} MB/s (ratio {pr['ratio_after_before']:.2f})"
        )
        for n in ("before", "after"):
            d = r["dedup"][n]
            print(
                f"dedup {n} ({args.split} shard, {d['shard_bytes'] / 1e6:.2f} MB): same rows "
                f"{100 * d['rewrite_same_rows']:.0f}%, one image replaced "
                f"{100 * d['one_image_replaced']:.0f}%, first row dropped "
                f"{100 * d['first_row_dropped']:.0f}%"
            )
        pk = r["dedup"]["package_after_one_split_changed"]
        print(
            f"package re-published after one image of {args.config}/{args.split} changed: "
            f"{100 * pk['before']:.2f}% deduplicated before, {100 * pk['after']:.2f}% after"
        )

    emit(result, args.json, report)


if __name__ == "__main__":
    main()
