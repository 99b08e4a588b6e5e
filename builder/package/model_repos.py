"""The reference U-Nets as Hub model repos: ``publish --models-repo ORG/NAME``.

Each config's U-Net goes to its own model repo, ``ORG/NAME-<config>``, laid out as
``huggingface_hub.PyTorchModelHubMixin`` expects, so that
``synthesis.models.unet.UNet.from_pretrained("ORG/NAME-mito")`` loads it:

- ``model.safetensors``: the package's ``models/<config>-unet.safetensors``, byte for byte
  (its sha256 is the ``params.attack.model_sha256`` of every attacked row);
- ``config.json``: the constructor arguments (from the weights' own header);
- ``README.md``: a model card (YAML: library, tags, datasets, metrics, licence) around the
  package's training record;
- ``.eval_results/fluorobench-c-<config>.yaml``: the model's scores on every split in the
  Hub's evaluation-results format (:mod:`builder.package.eval_results`), when the package
  holds ``results/<config>.json``.

No torch here: the header record is read by :func:`synthesis.models.weights.read_model_record`
(safetensors' numpy backend). Uploads go through :class:`builder.package.hub.Hub`, as the
dataset's do: a failure is a :class:`~builder.package.hub.PublishError` (exit code 1) or
:class:`~builder.package.hub.PublishRefused` (2), with the token scrubbed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from synthesis.levels import CONFIG_TITLES, CONFIGS
from synthesis.models.weights import read_model_record
from synthesis.runtime.errors import InputError
from synthesis.runtime.files import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
LIBRARY = "fluorobench-c"


#: Where a model repo holds the U-Net's bioimage.io package (``publish --bioimageio``), and
#: its description's name there: the layout ``bioimageio.spec`` reads from a Hub repo
#: (``load_description("huggingface/ORG/NAME-mito")``).
BIOIMAGEIO_FOLDER = "package"
BIOIMAGEIO_YAML = "bioimageio.yaml"


def bioimageio_repo_files(folder: Path) -> dict[str, Path]:
    """Path in the model repo -> file, for a bioimage.io package folder written by
    ``export-model --format bioimageio``: every file under ``package/``, its ``rdf.yaml`` as
    ``package/bioimageio.yaml``.

    Raises:
        InputError: ``folder`` holds no ``rdf.yaml``.
    """
    if not (folder / "rdf.yaml").is_file():
        raise InputError(f"{folder}: not a bioimage.io package folder (no rdf.yaml)")
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            files[f"{BIOIMAGEIO_FOLDER}/{BIOIMAGEIO_YAML if rel == 'rdf.yaml' else rel}"] = path
    return files


def model_repo_id(models_repo: str, config: str) -> str:
    """``ORG/NAME`` -> the repo of one config's U-Net, ``ORG/NAME-<config>``."""
    return f"{models_repo}-{config}"


def package_model(out: Path, config: str) -> Path:
    return out / "models" / f"{config}-unet.safetensors"


def model_card(
    manifest: dict[str, Any],
    config: str,
    record: dict[str, Any],
    *,
    sha256: str,
    dataset_repo: str,
    repo_id: str,
    training_notes: str,
    results: dict[str, Any] | None,
) -> str:
    """The model card (README.md) of one config's reference U-Net."""
    from huggingface_hub import ModelCard, ModelCardData

    from builder.package.card import licence_of, source_kinds

    licence = licence_of(
        source_kinds({**manifest, "configs": {config: manifest["configs"][config]}})
    )
    data = ModelCardData(
        library_name=LIBRARY,
        pipeline_tag="image-segmentation",
        tags=["microscopy", "fluorescence", "segmentation", "u-net", "pytorch_model_hub_mixin"],
        datasets=[dataset_repo],
        metrics=["iou", "dice"],
        **{k: v for k, v in licence.items() if k in ("license", "license_name", "license_link")},
    )
    arch = {k: v for k, v in record.get("architecture", {}).items() if k != "class"}
    scores = ""
    if results:
        rows = [
            f"| `{s}` | {r['iou']:.3f} | {r['dice']:.3f} | "
            + ("—" if r.get("robustness") is None else f"{r['robustness']:.1f}")
            + " |"
            for s, r in results["splits"].items()
        ]
        scores = (
            "\n## Scores on its package\n\n"
            "Foreground IoU and Dice (threshold 0.5, aggregated over all pixels); robustness "
            "= IoU / IoU on `test` × 100. The same scores are in "
            f"`.eval_results/` for the Hub's leaderboard of `{dataset_repo}`.\n\n"
            "| split | IoU | Dice | robustness |\n|---|---:|---:|---:|\n" + "\n".join(rows) + "\n"
        )
    body = f"""
# FluoroBench-C reference U-Net: {CONFIG_TITLES[config]}

The model that the transfer-attack splits (`fgsm_*`, `ifgsm_*`, `pgd_*`) of the dataset
[`{dataset_repo}`](https://huggingface.co/datasets/{dataset_repo}) (config `{config}`) were
made against. Weights sha256 `{sha256}`: every attacked row stores it in
`params.attack.model_sha256`.

## Load it

```python
from synthesis.models.unet import UNet  # {_install()}

model = UNet.from_pretrained("{repo_id}")  # eval mode; a folder path works too
```

Input: one-channel image, per-image z-score of the ADU values
(`synthesis.normalize.normalize(x, "zscore")`); output: one foreground logit per pixel
(foreground where the logit > 0). Architecture: plain-torch U-Net with batch norm,
`{json.dumps(arch, sort_keys=True)}`.

Score it on every split: `fluorobench-c evaluate --data {dataset_repo} --config {config}
--model {repo_id} --out results/`.

## Training

{training_notes.strip()}
{scores}
## Intended use and limits

A reference for the benchmark's transfer attacks and a baseline to compare against; it was
trained on synthetic images of the benchmark (`train` split, SNR 8 and up) and is not a
model for real microscopy data.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def _install() -> str:
    from builder.package.card import install_line

    return install_line()


def training_notes(out: Path, config: str) -> str:
    """The package's training record of the U-Net of ``config`` (its ``.md``, title dropped)."""
    notes = package_model(out, config).with_suffix(".md")
    if not notes.is_file():
        return "No training record in the package."
    lines = notes.read_text().splitlines()
    keep = [ln for ln in lines[1:] if not ln.startswith("Load it with")]  # drop the title
    return "\n".join(keep).strip()


def model_repo_files(
    out: Path, manifest: dict[str, Any], config: str, *, dataset_repo: str, models_repo: str
) -> dict[str, bytes | Path]:
    """Path in the repo -> bytes or a file: what the model repo of ``config`` holds.

    Raises:
        InputError: the package has no reference model for ``config``.
    """
    from builder.package.card import results_path
    from builder.package.eval_results import (
        eval_result_entries,
        eval_results_name,
        eval_results_yaml,
    )

    weights = package_model(out, config)
    if not weights.is_file():
        raise InputError(f"{weights}: no reference model for {config} (build attack splits)")
    record = read_model_record(weights)
    arch = {k: v for k, v in record.get("architecture", {}).items() if k != "class"}
    results = None
    res_path = results_path(out, config)
    if res_path.is_file():
        results = json.loads(res_path.read_text())
    repo_id = model_repo_id(models_repo, config)
    sha = sha256_file(weights)
    files: dict[str, bytes | Path] = {
        WEIGHTS_NAME: weights,
        CONFIG_NAME: (json.dumps(arch, indent=2, sort_keys=True) + "\n").encode(),
        "README.md": model_card(
            manifest,
            config,
            record,
            sha256=sha,
            dataset_repo=dataset_repo,
            repo_id=repo_id,
            training_notes=training_notes(out, config),
            results=results,
        ).encode(),
    }
    if results is not None:
        entries = eval_result_entries(results, dataset_repo)
        files[eval_results_name(config)] = eval_results_yaml(entries)
    return files


def write_model_folder(
    out: Path, manifest: dict[str, Any], config: str, folder: Path, *, dataset_repo: str
) -> Path:
    """Write the model repo of ``config`` as a local folder (``UNet.from_pretrained(folder)``)."""
    files = model_repo_files(
        out, manifest, config, dataset_repo=dataset_repo, models_repo=dataset_repo
    )
    for rel, content in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, content.read_bytes() if isinstance(content, Path) else content)
    return folder


def publish_models(
    out: Path,
    models_repo: str,
    *,
    dataset_repo: str,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    extra: dict[str, dict[str, Path]] | None = None,
) -> list[str]:
    """Upload each config's reference U-Net of the package ``out`` to ``ORG/NAME-<config>``
    (created if needed), one commit per repo; return the repo ids. ``extra``: per config,
    more files for its repo (path in the repo -> file), e.g. :func:`bioimageio_repo_files`.

    A repo that already holds the same files gets no new commit. ``token`` and ``endpoint``
    as for :func:`builder.package.publish.publish`.

    Raises:
        InputError: a malformed ``models_repo``, or a package without reference models.
        synthesis.models.weights.WeightsFileError: a weights file without a U-Net record.
        PublishRefused: the Hub refuses access (HTTP 401 or 403).
        PublishError: the Hub cannot be reached or fails, or a local file cannot be read;
            re-running the same command resumes.
    """
    from builder.package.hub import Hub, PublishError
    from builder.package.manifest import read_manifest
    from builder.package.upload_plan import check_repo_id

    check_repo_id(models_repo, "--models-repo")
    manifest = read_manifest(out)
    if manifest is None:
        raise InputError(f"{out}: not a fluorobench-c package (no manifest.json)")
    configs = [c for c in CONFIGS if c in manifest["configs"] and package_model(out, c).is_file()]
    if not configs:
        raise InputError(f"{out}: no reference model to publish (build attack splits)")
    hub = Hub(endpoint=endpoint, token=token)
    published = []
    for config in configs:
        repo_id = model_repo_id(models_repo, config)
        check_repo_id(repo_id, "--models-repo")
        try:
            files = model_repo_files(
                out, manifest, config, dataset_repo=dataset_repo, models_repo=models_repo
            )
            files.update((extra or {}).get(config, {}))
            hub.create_repo(
                repo_id,
                repo_type="model",
                private=private,
                what=f"creating the model repo {repo_id}",
            )
            made = hub.commit(
                repo_id,
                files.items(),
                message=f"FluoroBench-C reference U-Net ({config}) from {dataset_repo}",
                what=f"uploading the model repo {repo_id}",
                repo_type="model",
            )
        except OSError as exc:  # a local file (Hub errors are PublishErrors by now)
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise PublishError(
                hub.scrub(
                    f"uploading the reference models to {models_repo}-<config> failed "
                    f"({type(exc).__name__}: {text}); re-run the same command"
                )
            ) from None
        logger.info("published %s (%s)", repo_id, made.url)
        published.append(repo_id)
    return published
