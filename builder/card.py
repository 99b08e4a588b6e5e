"""The package's README.md: the dataset card rendered from ``dataset_card.md`` plus YAML.

The YAML front matter is what ``load_dataset`` reads: ``configs`` (each split's explicit
file list; ``snr_8`` points at the files of ``test``) and ``dataset_info`` (features and
``num_examples`` per split, checked by ``datasets`` on load).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from builder.plan import CONFIG_TITLES, CONFIGS
from builder.shards import atomic_write_bytes
from synthesis.levels import (
    ATTACK_EPSILONS_GREY,
    ATTACKS,
    BLUR_LEVELS,
    REFERENCE_SNR,
    SIB_SIGMA_PX,
    SNR_LEVELS,
    SVB,
    Camera,
)

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parents[1] / "dataset_card.md"


def split_files(manifest: dict[str, Any], config: str, split: str) -> list[str]:
    """Paths (relative to the package) of the shards of ``split``, following aliases."""
    splits = manifest["configs"][config]["splits"]
    entry = splits[split]
    if entry.get("alias_of"):
        entry = splits[entry["alias_of"]]
    return [s["path"] for s in entry["shards"]]


def split_num_bytes(manifest: dict[str, Any], config: str, split: str) -> int:
    splits = manifest["configs"][config]["splits"]
    entry = splits[split]
    if entry.get("alias_of"):
        entry = splits[entry["alias_of"]]
    return sum(s.get("num_bytes", 0) for s in entry["shards"])


def card_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter as a dict."""
    configs = [c for c in CONFIGS if c in manifest["configs"]]
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
            {"config_name": config, "data_files": data_files, "default": config == configs[0]}
        )
    card = DatasetCardData()
    DatasetInfosDict(infos).to_dataset_card_data(card)
    meta = card.to_dict()
    source = manifest["recipe"]["source"]
    meta = {
        "license": "cc-by-4.0" if source == "procedural" else "other",
        "task_categories": ["image-segmentation"],
        "tags": ["microscopy", "fluorescence", "robustness", "benchmark", "synthetic", "biology"],
        "pretty_name": "FluoroBench-C",
        "size_categories": [_size_category(manifest)],
        "configs": yaml_configs,
        **meta,
    }
    return meta


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
            "Masks are procedural (generated by `fluorobench-c`, no third-party data): "
            "released under CC BY 4.0."
        )
    else:
        text = f"Masks from `{Path(source).name}`."
    return (
        text + "\n\n- BBBC038 (2018 Data Science Bowl) nuclei: CC0 1.0, Broad Institute.\n"
        "- ER and mitochondria sources (Luo et al., IEEE DataPort doi 10.21227/t2he-zn97): "
        "per their own terms; not redistributed here unless built from them by the user.\n"
        "- Original benchmark: Zhong, Li & Yang, IEEE DataPort doi 10.21227/kxay-5y38."
    )


def _models(manifest: dict[str, Any]) -> str:
    lines = []
    for config in CONFIGS:
        model = manifest["configs"].get(config, {}).get("model")
        if model:
            lines.append(
                f"| {config} | `{model['path']}` | `{model['sha256'][:16]}…` | "
                f"{model.get('val_iou', float('nan')):.3f} |"
            )
    if not lines:
        return ""
    head = (
        "## Reference model\n\nAttack splits are transfer attacks against the reference U-Net "
        "shipped in `models/` (its sha256 is in every attacked row's `params.attack`).\n\n"
        "| config | weights | sha256 | validation IoU |\n|---|---|---|---:|"
    )
    return head + "\n" + "\n".join(lines)


def render_card(manifest: dict[str, Any], repo: str = "fluorobench-c") -> str:
    """The full README.md text of a package."""
    if not TEMPLATE.exists():
        raise FileNotFoundError(
            f"{TEMPLATE}: dataset card template not found; install fluorobench-c from its "
            "source tree (pip install -e .)"
        )
    recipe = manifest["recipe"]
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    meta = yaml.safe_dump(card_metadata(manifest), sort_keys=False, allow_unicode=True).strip()
    values = {
        "yaml": meta,
        "title": ", ".join(f"**{CONFIG_TITLES[c]}**" for c in configs),
        "version": manifest["package_version"],
        "source": recipe["source"]
        if recipe["source"] == "procedural"
        else Path(recipe["source"]).name,
        "renderer": recipe["renderer"],
        "noise_model": recipe["noise_model"],
        "seed": str(recipe["seed"]),
        "repo": repo,
        "first_config": configs[0],
        "reference_snr": f"{REFERENCE_SNR:g}",
        "splits_table": _splits_table(manifest),
        "levels_table": levels_table(),
        "camera": ", ".join(f"{k} = {v:g}" for k, v in Camera().to_dict().items()),
        "models": _models(manifest),
        "sources": _sources(manifest),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def write_card(out: Path, manifest: dict[str, Any], repo: str = "fluorobench-c") -> None:
    atomic_write_bytes(out / "README.md", render_card(manifest, repo).encode())
