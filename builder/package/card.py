"""The package's README.md: the dataset card rendered from ``dataset_card.md`` plus YAML.

The YAML front matter is what ``load_dataset`` reads: ``configs`` (each split's explicit
file list; ``snr_8`` points at the files of ``test``) and ``dataset_info`` (features and
``num_examples`` per split, checked by ``datasets`` on load). :func:`card_metadata` is the one
place it is made (``verify`` compares the README with it).

The text around it is filled from the same data the code uses: the level tables of
:mod:`synthesis.levels`, the manifest (split counts, reference models), the sample grids of
:mod:`builder.package.samples` and, when ``fluorobench-c evaluate`` has written them, the reference
model's results in ``results/<config>.json``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from builder.package.eval_results import (
    METRIC_LABELS,
    metric_cell,
    ranked_entries,
    write_benchmark_declaration,
)
from builder.package.manifest import pseudo_mask_method, split_files, split_num_bytes
from builder.package.samples import grid_path, write_sample_grids
from synthesis.levels import (
    ATTACK_EPSILONS_GREY,
    ATTACKS,
    BLUR_LEVELS,
    CONFIG_TITLES,
    CONFIGS,
    PIXEL_SIZE_UM,
    REFERENCE_SNR,
    SIB_SIGMA_PX,
    SNR_LEVELS,
    SVB,
    TRAIN_SNR,
    Camera,
)
from synthesis.runtime.files import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Where the card template is found, in order: the repository's top level (a source
#: checkout, an editable install) and beside this module (a wheel, which carries the
#: top-level file there: pyproject.toml's force-include).
TEMPLATE_PLACES = (
    Path(__file__).resolve().parents[2] / "dataset_card.md",
    Path(__file__).resolve().with_name("dataset_card.md"),
)


def template_path() -> Path:
    """The card template ``dataset_card.md`` (see :data:`TEMPLATE_PLACES`).

    Raises:
        FileNotFoundError: in neither place.
    """
    for place in TEMPLATE_PLACES:
        if place.is_file():
            return place
    raise FileNotFoundError(
        f"dataset card template not found at {' or '.join(map(str, TEMPLATE_PLACES))}; "
        "install fluorobench-c from its wheel or its source tree (pip install -e .)"
    )


#: The config the docs use; the card's default when the package has it.
DEFAULT_CONFIG = "mito"


def default_config(manifest: dict[str, Any]) -> str:
    """``mito`` when the package has it, else its first config."""
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    return DEFAULT_CONFIG if DEFAULT_CONFIG in configs else configs[0]


def install_line() -> str:
    """A ``pip install`` line that works: the Source URL of the installed package's
    metadata (``pyproject.toml``) as a git URL, until the package is on PyPI."""
    from importlib.metadata import PackageNotFoundError, metadata

    url = "https://github.com/fluorobench-c/fluorobench-c"
    try:
        for entry in metadata("fluorobench-c").get_all("Project-URL") or []:
            label, _, value = entry.partition(",")
            if label.strip().lower() == "source":
                url = value.strip()
    except PackageNotFoundError:
        pass
    return f'pip install "fluorobench-c @ git+{url}"'


def card_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter as a dict."""
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    default = default_config(manifest)
    infos = {}
    yaml_configs = []
    for config in configs:
        entry = manifest["configs"][config]
        splits = SplitDict()
        data_files = []
        for name, split in entry["splits"].items():
            splits.add(
                SplitInfo(
                    name=name,
                    num_bytes=split_num_bytes(manifest, config, name),
                    num_examples=split["num_rows"],
                )
            )
            data_files.append({"split": name, "path": split_files(manifest, config, name)})
        infos[config] = DatasetInfo(
            features=Features.from_dict(entry["features"]), splits=splits, config_name=config
        )
        yaml_configs.append(
            {"config_name": config, "data_files": data_files, "default": config == default}
        )
    card = DatasetCardData()
    DatasetInfosDict(infos).to_dataset_card_data(card)
    meta = card.to_dict()
    kinds = source_kinds(manifest)
    licence = licence_of(kinds)
    meta = {
        **licence,
        "task_categories": ["image-segmentation"],
        "task_ids": ["semantic-segmentation"]
        + (["instance-segmentation"] if "nucleus" in configs else []),
        "annotations_creators": sorted(
            {"machine-generated" if k in MACHINE_MASKS else "expert-generated" for k in kinds}
        ),
        "language_creators": ["machine-generated"],
        "multilinguality": ["monolingual"],
        "language": ["en"],
        "source_datasets": sorted({SOURCE_LICENCES[k]["source_dataset"] for k in kinds}),
        "tags": ["microscopy", "fluorescence", "robustness", "benchmark", "synthetic", "biology"],
        "pretty_name": "FluoroBench-C",
        "size_categories": [_size_category(manifest)],
        "configs": yaml_configs,
        **meta,
    }
    return meta


#: Per kind of mask source: the licence of a package built from it, and how the card's
#: ``source_datasets`` names it. Procedural masks are the project's own: CC BY 4.0 (our
#: choice: reuse with attribution, so that results stay traceable to the benchmark).
SOURCE_LICENCES: dict[str, dict[str, str]] = {
    "procedural": {"license": "cc-by-4.0", "source_dataset": "original"},
    "bbbc038": {"license": "cc0-1.0", "source_dataset": "extended|bbbc038"},
    "luo": {
        "license": "other",
        "license_name": "ieee-dataport-luo-er-mito",
        "license_link": "https://doi.org/10.21227/t2he-zn97",
        "source_dataset": "extended|luo-er-mito",
    },
    "folder": {"license": "unknown", "source_dataset": "extended"},
    "images": {"license": "unknown", "source_dataset": "extended"},
}
#: Kinds of source whose masks a program made: procedural masks, and the pseudo-masks of
#: real images without manual masks (``images``).
MACHINE_MASKS: tuple[str, ...] = ("procedural", "images")


def source_kinds(manifest: dict[str, Any]) -> list[str]:
    """The kinds of mask source of the package's configs (``procedural``, ``bbbc038``...)."""
    kinds = []
    for entry in manifest["configs"].values():
        kind = (entry.get("source") or {}).get("kind") or (
            "procedural" if manifest["recipe"]["source"] == "procedural" else "folder"
        )
        kind = kind if kind in SOURCE_LICENCES else "folder"
        if kind not in kinds:
            kinds.append(kind)
    return kinds or ["procedural"]


def licence_of(kinds: list[str]) -> dict[str, str]:
    """The card's ``license`` (and ``license_name``/``license_link`` for ``other``): the
    source's when there is one kind; ``other``, naming each, when configs mix sources."""
    terms = [SOURCE_LICENCES[k] for k in kinds]
    if len({t["license"] for t in terms}) == 1 and len(terms) == 1:
        return {k: v for k, v in terms[0].items() if k != "source_dataset"}
    return {
        "license": "other",
        "license_name": "per-source",
        "license_link": "README.md",  # the card's "Sources and licences" section
    }


def _size_category(manifest: dict[str, Any]) -> str:
    n = sum(
        s["num_rows"]
        for c in manifest["configs"].values()
        for s in c["splits"].values()
        if not s.get("alias_of")
    )
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def _splits_table(manifest: dict[str, Any]) -> str:
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    names: list[str] = []
    for c in configs:
        names += [n for n in manifest["configs"][c]["splits"] if n not in names]
    head = "| split | " + " | ".join(configs) + " |\n|---|" + "---:|" * len(configs)
    lines = [head]
    for n in names:
        cells = [
            str(manifest["configs"][c]["splits"].get(n, {}).get("num_rows", "—")) for c in configs
        ]
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def levels_table() -> str:
    """The severity tables, printed from :mod:`synthesis.levels` (the data the code uses)."""
    snr = ", ".join(str(s) for s in SNR_LEVELS)
    rows = [
        "| family | level | parameter |",
        "|---|---|---|",
        f"| `snr` | {snr} | target SNR (reference = {REFERENCE_SNR:g}) |",
    ]
    for lv in BLUR_LEVELS:
        rows.append(
            f"| `sib` | {lv} | Gaussian PSF σ = {SIB_SIGMA_PX[lv]:g} px (reflect padding) |"
        )
    for lv in BLUR_LEVELS:
        rows.append(
            f"| `svb` | {lv} | σ(r) = {SVB.sigma_center_px:g} + ({SIB_SIGMA_PX[lv]:g} − "
            f"{SVB.sigma_center_px:g})·(r/r_max)² px, {SVB.rings} rings |"
        )
    for name, proto in ATTACKS.items():
        eps = ", ".join(str(e) for e in ATTACK_EPSILONS_GREY)
        iters = ", ".join(str(proto.iterations(e)) for e in ATTACK_EPSILONS_GREY)
        step = "ε" if proto.step_grey is None else f"{proto.step_grey:g}"
        start = "uniform random start" if proto.random_start else "no random start"
        rows.append(f"| `{name}` | ε = {eps} | step {step}, iterations {iters}, {start} |")
    return "\n".join(rows)


def _sources(manifest: dict[str, Any]) -> str:
    source = manifest["recipe"]["source"]
    if source == "procedural":
        text = (
            "This package was built from **procedural masks** generated by `fluorobench-c` "
            "(no third-party images or annotations): it is released under **CC BY 4.0**."
        )
    elif pseudo_mask_configs(manifest):
        text = (
            f"This package was built from the real images of **`{Path(source).name}`**, "
            "which have no manual masks, and from pseudo-masks made of them (see "
            "Pseudo-masks); the licence of that source applies to its images, the masks and "
            "the images derived from them (below)."
        )
    else:
        text = (
            f"This package was built from masks of **`{Path(source).name}`**; the licence of "
            "that source applies to the masks and the images derived from them (below)."
        )
    return (
        text + "\n\n"
        "| source | used for | licence |\n|---|---|---|\n"
        "| procedural masks (`fluorobench-c`) | default build of all three configs | CC BY 4.0 |\n"
        "| BBBC038 (2018 Data Science Bowl, Broad Bioimage Benchmark Collection) | `nucleus` "
        "built from real masks | CC0 1.0 |\n"
        "| Luo et al., IEEE DataPort, doi 10.21227/t2he-zn97 | `er` and `mito` built from "
        "real masks | per the terms of that dataset (not redistributed here unless a user "
        "builds from it) |\n"
        "| Zhong, Li & Yang, IEEE DataPort, doi 10.21227/kxay-5y38 | the benchmark design "
        "(splits, levels, attack protocol) | per the terms of that dataset; no image of it is "
        "included |"
    )


def pseudo_mask_configs(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The configs whose masks are pseudo-masks, each with its method (the ``pseudo_mask``
    of the manifest's source entry: a source of real images without manual masks)."""
    out = {}
    for config in CONFIGS:
        method = pseudo_mask_method(manifest, config)
        if method is not None:
            out[config] = method
    return out


def _pseudo_masks(manifest: dict[str, Any]) -> str:
    """What the masks of configs built from images without manual masks are (else "")."""
    methods = pseudo_mask_configs(manifest)
    if not methods:
        return ""
    lines = []
    for config, method in methods.items():
        params = ", ".join(f"{k} = {v}" for k, v in method.items() if k not in ("name", "version"))
        lines.append(
            f"- **`{config}`**: method `{method.get('name', '?')}` (version "
            f"{method.get('version', '?')}): {params}."
        )
    return (
        "### Pseudo-masks\n\n"
        "The masks of "
        + ", ".join(f"`{c}`" for c in methods)
        + " are **pseudo-masks**, not manual annotations: the source holds real images "
        "without masks, and each whole image (before tiling) was segmented by a classical "
        "method (`synthesis/groundtruth/pseudo_masks.py`; background subtraction, a local "
        "threshold and a size filter for tubules, an Otsu threshold for nuclei). Every row "
        'records it in `params.mask_params` (JSON: `"mask": "pseudo"` and `"pseudo_mask"`, '
        "the method and its parameters). The synthetic splits are rendered from these masks, "
        "so there the mask is exact for the image; in `real` and its corruptions it is the "
        "method's guess, and a score against it measures agreement with the pseudo-mask, not "
        "accuracy against ground truth.\n\n" + "\n".join(lines)
    )


def _native_snr(manifest: dict[str, Any]) -> str:
    """Where the source's real tiles lie on the SNR scale (sources with real images only)."""
    parts = []
    for config in CONFIGS:
        summary = manifest["configs"].get(config, {}).get("native_snr")
        if not summary or not summary["tiles"]:
            continue
        edges = summary["histogram"]["edges"]
        counts = summary["histogram"]["counts"]
        labels = [f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:], strict=False)]
        labels.append(f"≥ {edges[-1]:g}")
        q = summary["quantiles"]
        parts.append(
            f"**`{config}`**: {summary['tiles']} real test tiles; native SNR median "
            f"{q['p50']:g} (5–95%: {q['p5']:g}–{q['p95']:g}).\n\n"
            "| native SNR | " + " | ".join(labels) + " |\n"
            "|---|" + "---:|" * len(labels) + "\n"
            "| tiles | " + " | ".join(str(c) for c in counts) + " |"
        )
    if not parts:
        return ""
    return (
        "### Where the real images lie on the SNR scale\n\n"
        "The native SNR of each real test tile: its own noise, fitted as `var = a x + b`, on "
        "its mask, with the SNR definition of the synthetic splits. SNR levels well below the "
        "bulk are harsher than this microscope's images; `real_snr_K` keeps only the tiles "
        "above K.\n\n" + "\n\n".join(parts)
    )


def _models(manifest: dict[str, Any]) -> str:
    lines = []
    for config in CONFIGS:
        model = manifest["configs"].get(config, {}).get("model")
        if model:
            lines.append(
                f"| {config} | `{model['path']}` | `{model['sha256'][:16]}…` | "
                f"{number_cell(model.get('val_iou'))} |"
            )
    if not lines:
        return (
            "No reference model in this package: it is trained and shipped (`models/`) when "
            "attack splits are built."
        )
    head = (
        "Attack splits are transfer attacks against the reference U-Net shipped in `models/` "
        "(safetensors weights and a model card; their sha256 is in every attacked row's "
        "`params.attack.model_sha256`). It was trained on `train` (reference condition) and "
        "selected on `validation`. When the package is published with `fluorobench-c publish "
        "--models-repo ORG/NAME`, each is also the Hub model repo `ORG/NAME-<config>`, loaded "
        "with `UNet.from_pretrained`.\n\n"
        "| config | weights | sha256 | validation IoU |\n|---|---|---|---:|"
    )
    return head + "\n" + "\n".join(lines)


def _samples(manifest: dict[str, Any], out: Path | None) -> str:
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    if out is None:
        return "No sample grid in this package."
    blocks = []
    for c in configs:
        path = grid_path(out, c)
        if path.exists():
            rel = path.relative_to(out).as_posix()
            blocks.append(f"**{CONFIG_TITLES[c]}**\n\n![{c} samples]({rel})")
    if not blocks:
        return "No sample grid in this package."
    return (
        "One test image id of each config across its splits: the mask, the noise-free image, "
        "the SNR levels from the reference (SNR 8) to SNR 1, the SIB and SVB levels and the "
        "attack budgets (rows FGSM, I-FGSM, PGD). Each tile is scaled to its own 0.5–99.5 "
        "percentile range.\n\n" + "\n\n".join(blocks)
    )


def number_cell(value: Any, digits: int = 3) -> str:
    """A table cell: a finite number with ``digits`` decimals, anything else (None, NaN, a
    missing score) as "—". The one formatter of the card's, the fidelity report's and the
    leaderboard's Markdown tables.

    Example:
        >>> number_cell(0.12345), number_cell(82.66, 1), number_cell(None), number_cell(float("nan"))
        ('0.123', '82.7', '—', '—')
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "—"


def spread_cell(mean: Any, sd: Any, digits: int = 3) -> str:
    """A table cell for a mean over seeds: ``mean ± sd`` with ``digits`` decimals each; the
    mean alone when there is no sd (one seed); "—" when there is no mean. Numbers are
    formatted as :func:`number_cell` does.

    Example:
        >>> spread_cell(0.787, 0.0633), spread_cell(12.34, None, 1), spread_cell(None, 0.1)
        ('0.787 ± 0.063', '12.3', '—')
    """
    cell = number_cell(mean, digits)
    spread = number_cell(sd, digits)
    if cell == "—" or spread == "—":
        return cell
    return f"{cell} ± {spread}"


def _train_snr(configs: list[str]) -> str:
    """The SNR range of the ``train`` and ``validation`` rows of each config, e.g.
    ``er 8; nucleus 8–75``."""

    def span(lo: float, hi: float) -> str:
        return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"

    return "; ".join(f"{c} {span(*TRAIN_SNR[c])}" for c in configs)


def results_path(out: Path, config: str) -> Path:
    return out / "results" / f"{config}.json"


def _results(manifest: dict[str, Any], out: Path | None) -> str:
    """The reference model's scores per split, from ``results/<config>.json`` when present."""
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    blocks = []
    for c in configs:
        path = results_path(out, c) if out is not None else None
        if path is None or not path.exists():
            continue
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("not rendering %s: %s", path, exc)
            continue
        splits = res.get("splits") or {}
        model = (res.get("model") or {}).get("description", "reference U-Net")
        reported = [m for m in (res.get("metrics") or {}).get("reported", []) if m in METRIC_LABELS]
        lines = [
            f"**{CONFIG_TITLES[c]}** — {model} (`{path.relative_to(out).as_posix()}`)",
            "",
            "| split | images | IoU | Dice | robustness |"
            + "".join(f" {METRIC_LABELS[m]} |" for m in reported),
            "|---|---:|---:|---:|---:|" + "---:|" * len(reported),
        ]
        order = list(manifest["configs"][c]["splits"])  # the package's order, then the rest
        for name in sorted(splits, key=lambda n: (order.index(n) if n in order else len(order), n)):
            r = splits[name]
            lines.append(
                f"| `{name}` | {r.get('images', '—')} | {number_cell(r.get('iou'))} | "
                f"{number_cell(r.get('dice'))} | {number_cell(r.get('robustness'), 1)} |"
                + "".join(f" {metric_cell(r, m)} |" for m in reported)
            )
        families = res.get("families") or {}
        if families:
            rel = [m for m in reported if m in ("cldice", "ap", "ap_50", "f1", "pq", "nsd")]
            lines += [
                "",
                "| family | mean robustness |"
                + "".join(f" {METRIC_LABELS[m]} robustness |" for m in rel),
                "|---|---:|" + "---:|" * len(rel),
            ]
            for f, v in families.items():
                by = v.get("metrics") or {}
                lines.append(
                    f"| {f} | {number_cell(v.get('mean_robustness'), 1)} |"
                    + "".join(
                        f" {number_cell(by.get(m, {}).get('mean_robustness'), 1)} |" for m in rel
                    )
                )
        plot = path.with_name(f"{c}-robustness.png")
        if plot.exists():
            lines += ["", f"![{c} robustness]({plot.relative_to(out).as_posix()})"]
        blocks.append("\n".join(lines))
    if not blocks:
        return (
            "No evaluation results are included in this package yet. They appear here once "
            "`fluorobench-c evaluate` has written `results/<config>.json` and the card is "
            "rendered again."
        )
    return (
        "IoU and Dice on the foreground (threshold 0.5, aggregated over all pixels); "
        "robustness = IoU / IoU on `test` × 100. Beside them, where the results have them, "
        "the structure metrics (means per image; clDice pooled): clDice and the Betti-number "
        "errors for ER and mitochondria, AP, F1 and PQ for nuclei, HD95 (px) and NSD "
        "(τ = 2 px) for all; a family's robustness on a metric is its mean of metric / "
        "metric on `test` × 100.\n\n" + "\n\n".join(blocks)
    )


def leaderboard_path(out: Path, config: str) -> Path:
    """Where the card looks for a leaderboard of ``config``: ``leaderboard/<config>/``
    (``fluorobench-c leaderboard --out PKG/leaderboard/<config>``)."""
    return out / "leaderboard" / config / "leaderboard.json"


def _leaderboards(manifest: dict[str, Any], out: Path | None) -> str:
    """A compact table per config from ``leaderboard/<config>/leaderboard.json``."""
    blocks = []
    for c in (c for c in CONFIGS if c in manifest["configs"]):
        path = leaderboard_path(out, c) if out is not None else None
        if path is None or not path.is_file():
            continue
        try:
            board = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("not rendering %s: %s", path, exc)
            continue
        s = board["settings"]
        rows = ranked_entries(board)
        lines = [
            f"**{CONFIG_TITLES[c]}** (`{path.relative_to(out).as_posix()}`): preset "
            f"`{s['preset']}`, {s['recipe']['epochs']} epochs, batch {s['recipe']['batch_size']}, "
            f"machine: {board.get('machine', board.get('device', '?'))}.",
            "",
            "| rank | model | family | parameters | test IoU | corruption | white-box PGD ε8 "
            "| transfer ε8 |",
            "|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for i, e in enumerate(rows, start=1):
            rank = str(i) if e.get("converged", True) else "— (did not learn)"
            lines.append(
                f"| {rank} | `{e['model']}` | {e['family']} | {e['parameters']:,} | "
                f"{number_cell(e['test_iou'])} | {number_cell(e['corruption_robustness'], 1)} | "
                f"{number_cell(e['adversarial_robustness'], 1)} | {number_cell(e['transfer_robustness'], 1)} |"
            )
        rho = board.get("correlation", {}).get("spearman")
        lines += [
            "",
            f"Spearman rank correlation, corruption vs adversarial robustness: {number_cell(rho, 2)}.",
        ]
        blocks.append("\n".join(lines))
    if not blocks:
        return (
            "No leaderboard in this package. `fluorobench-c leaderboard --data PKG --config "
            "mito --out PKG/leaderboard/mito` trains a zoo of MONAI architectures with one "
            "recipe and ranks them; the card shows it once rendered again."
        )
    return (
        "Architectures trained on `train` with one recipe, selected on `validation`, "
        "evaluated on every split. Corruption robustness = mean of the SNR, SIB and SVB "
        "family means; white-box PGD at ε = 8 grey levels on each model itself; transfer = "
        "mean over `fgsm_8`, `ifgsm_8`, `pgd_8`. Small presets are indicative.\n\n"
        + "\n\n".join(blocks)
    )


def _source_name(recipe: dict[str, Any]) -> str:
    """The masks' source as the card names it: ``procedural`` (with the mito generator when
    it is not the default), or the source folder's name."""
    if recipe["source"] != "procedural":
        return Path(recipe["source"]).name
    if recipe.get("mito_masks", "worms") != "worms":
        return (
            f"procedural (mito: `{recipe['mito_masks']}` generator, "
            f"{PIXEL_SIZE_UM['mito']:g} µm/px)"
        )
    return "procedural"


def render_card(
    manifest: dict[str, Any], repo: str = "fluorobench-c", out: Path | None = None
) -> str:
    """The full README.md text of a package.

    Args:
        manifest: the package's ``manifest.json``.
        repo: what the load examples name (a Hub repo id, or the folder name).
        out: the package folder, for the sample grids and results it holds (None: none).

    Raises:
        FileNotFoundError: the template ``dataset_card.md`` is missing.
    """
    template = template_path()
    recipe = manifest["recipe"]
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    meta = yaml.safe_dump(card_metadata(manifest), sort_keys=False, allow_unicode=True).strip()
    values = {
        "yaml": meta,
        "title": ", ".join(f"**{CONFIG_TITLES[c]}**" for c in configs),
        "version": manifest["package_version"],
        "source": _source_name(recipe),
        "renderer": recipe["renderer"],
        "noise_model": recipe["noise_model"],
        "seed": str(recipe["seed"]),
        "repo": repo,
        "first_config": default_config(manifest),
        "install": install_line(),
        "reference_snr": f"{REFERENCE_SNR:g}",
        "train_snr": _train_snr(configs),
        "splits_table": _splits_table(manifest),
        "levels_table": levels_table(),
        "camera": ", ".join(f"{k} = {v:g}" for k, v in Camera().to_dict().items()),
        "models": _models(manifest),
        "results": _results(manifest, out),
        "leaderboard": _leaderboards(manifest, out),
        "samples": _samples(manifest, out),
        "sources": _sources(manifest),
        "native_snr": _native_snr(manifest),
        "pseudo_masks": _pseudo_masks(manifest),
    }
    text = template.read_text()
    if not values["native_snr"]:  # no real tiles: no section, no blank lines
        text = text.replace("{{native_snr}}\n\n", "")
    if not values["pseudo_masks"]:  # manual or procedural masks: no section
        text = text.replace("{{pseudo_masks}}\n\n", "")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def write_card(out: Path, manifest: dict[str, Any], repo: str = "fluorobench-c") -> None:
    """Write the sample grids (``images/``), ``README.md`` and ``eval.yaml`` (the Hub's
    benchmark declaration, :mod:`builder.package.eval_results`) of the package in ``out``."""
    try:
        write_sample_grids(out, manifest)
    except (OSError, ValueError, KeyError) as exc:  # a card without pictures beats no card
        logger.warning("no sample grid: %s", exc)
    atomic_write_bytes(out / "README.md", render_card(manifest, repo, out).encode())
    write_benchmark_declaration(out, manifest)
