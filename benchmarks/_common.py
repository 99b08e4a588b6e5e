"""What the benchmark scripts share: the repository on ``sys.path``, the machine line, best-of-N
timing, the common command-line options and the JSON-or-report output.

``benchmarks/`` is not a package: each script is run as ``python benchmarks/NAME.py``, so its
own folder is first on ``sys.path`` and ``import _common`` finds this module, which puts the
repository root on ``sys.path`` (before any installed copy) for the scripts' next imports.
Import it before ``synthesis``, ``builder``, ``fluorobench_c`` or ``tests``.

torch is imported only where it is used, so a script that does not time torch code (and
``realism.py``, which sets ``OMP_WAIT_POLICY`` first) decides when it loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The BBBC038 folder the realism scripts read by default (the workspace's shared data).
BBBC038 = ROOT.parent / "shared" / "data" / "bbbc038-fluorescence" / "stage1_train"
#: The real mitochondria images (no masks: an images-only source) in the shared data.
MITO_DATA = ROOT.parent / "shared" / "data" / "mito-fluorescence"


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s) and its widest vector extensions (AVX2, AVX-512,
    AMX), or the architecture where ``/proc/cpuinfo`` is not readable."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in info.splitlines())
    }
    name = " ".join(fields.get("model name", platform.machine()).split())
    flags = set(fields.get("flags", "").split())
    isa = [
        n for f, n in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("amx_tile", "AMX")) if f in flags
    ]
    return f"{name} ({', '.join(isa)})" if isa else name


def machine(
    device: str | torch.device | None = None,
    *,
    threads: bool = False,
    load: bool = False,
    omp: bool = False,
    torch_version: bool = True,
) -> str:
    """One line for the results: CPU and cores, GPU, torch version.

    Args:
        device: the device the benchmark ran on: a CUDA device is named, any other is
            ``no GPU used``; None: GPU 0 if there is one, ``no GPU`` otherwise.
        threads: add ``(N torch threads)`` after the cores.
        load: add ``(load average 1m, 5m, 15m)`` after the cores (before the threads).
        omp: with ``threads``, add the ``OMP_WAIT_POLICY`` in force.
        torch_version: end with ``torch X.Y``.
    """
    import torch

    cpu = f"{cpu_model()}, {os.cpu_count()} cores"
    if load:
        cpu += " (load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg()) + ")"
    if threads:
        policy = f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}" if omp else ""
        cpu += f" ({torch.get_num_threads()} torch threads{policy})"
    if device is None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    else:
        device = torch.device(device)
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    parts = [cpu, gpu] + ([f"torch {torch.__version__}"] if torch_version else [])
    return ", ".join(parts)


# ----------------------------------------------------------------------------- timing


def _sync(device: str | torch.device | None) -> None:
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any], repeats: int, device: str | torch.device | None = None
) -> tuple[float, Any]:
    """(best wall time in seconds of ``repeats`` calls of ``fn``, the last call's result).

    On a CUDA ``device`` each call is timed between two synchronisations, so the time covers
    the kernels it queued and not just their launch.
    """
    best, out = math.inf, None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def best_of(fn: Callable[[], Any], repeats: int, device: str | torch.device | None = None) -> float:
    """The best wall time in seconds of ``repeats`` calls of ``fn`` (see :func:`timed`)."""
    return timed(fn, repeats, device)[0]


def interleaved(
    runs: Mapping[str, Callable[[], Any]], repeats: int, device: str | torch.device | None = None
) -> dict[str, float]:
    """The best time of each of ``runs``, over ``repeats`` rounds that call each once in turn.

    On a shared machine the load changes over minutes, so timing one method after the other
    would compare different machines; interleaved, every method sees the same load.
    """
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
        for name, fn in runs.items():
            best[name] = min(best[name], best_of(fn, 1, device))
    return best


# ----------------------------------------------------------------------------- command line


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def add_device(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--device", default=default)


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (0 leaves torch's default)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def add_repeats(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--repeats", type=int, default=default, help="timings are the best of these")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of the report")


def add_tiles(p: argparse.ArgumentParser, grid: Path) -> None:
    """The BBBC038 tiles the realism scripts compare and where their picture grid goes:
    ``--data``, ``--split``, ``--images``, ``--seed``, ``--grid``, ``--no-grid``."""
    from synthesis.groundtruth.sources import SPLITS

    p.add_argument("--data", type=Path, default=BBBC038)
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--images", type=int, default=80, help="real tiles compared (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=Path, default=grid)
    p.add_argument("--no-grid", action="store_true")


def add_speed(p: argparse.ArgumentParser) -> None:
    """``--speed-batch`` (images per timed call) and ``--repeats``."""
    p.add_argument("--speed-batch", type=int, default=16)
    add_repeats(p, 3)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def emit(result: dict, as_json: bool, report: Callable[[dict], None]) -> None:
    """Print ``result`` as indented JSON (``--json``) or as the script's ``report``."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


def load_tiles(args: argparse.Namespace) -> tuple[Any, list]:
    """(source, items): the ``--images`` nucleus tiles of ``--split`` in ``--data``, split by
    ``--seed`` (the other splits get one tile each)."""
    from synthesis.groundtruth.sources import SPLITS, open_source

    if not args.data.exists():
        raise SystemExit(f"BBBC038 stage1_train not found at {args.data} (see --data)")
    counts = {s: 1 for s in SPLITS} | {args.split: args.images}
    src = open_source(args.data, "nucleus", seed=args.seed, counts=counts)
    return src, src.load(src.ids(args.split))


#: Geometry of :func:`panel_grid` figures: panel size, gap, title height, label column.
PANEL, PANEL_GAP, PANEL_HEAD, PANEL_SIDE = 256, 6, 16, 150


def panel_grid(
    rows: list[tuple[str, list[Any], list[str]]], path: Path, *, palette: bool = False
) -> int:
    """Write a figure of rows of ``PANEL`` px image panels (uint8 arrays, grey or RGB), each
    row ``(label, panels, titles)``, the label in a left column and a title above each panel;
    as a 256-colour palette PNG (about half the bytes of RGB) or a grey one. Returns its
    size in bytes."""
    from PIL import Image, ImageDraw

    columns = max(len(panels) for _, panels, _ in rows)
    width = PANEL_SIDE + columns * (PANEL + PANEL_GAP)
    height = len(rows) * (PANEL + PANEL_HEAD + PANEL_GAP)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, panels, titles) in enumerate(rows):
        y0 = r * (PANEL + PANEL_HEAD + PANEL_GAP)
        draw.multiline_text((4, y0 + PANEL_HEAD + 4), label, fill=(0, 0, 0))
        for c, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            x0 = PANEL_SIDE + c * (PANEL + PANEL_GAP)
            draw.text((x0 + 2, y0 + 2), title, fill=(0, 0, 0))
            canvas.paste(Image.fromarray(panel), (x0, y0 + PANEL_HEAD))
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        canvas.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
    else:
        canvas.convert("L").save(path, optimize=True)
    return path.stat().st_size
