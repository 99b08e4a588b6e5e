"""A package's reference U-Net as a bioimage.io model package:
``fluorobench-c export-model PKG --config mito --format bioimageio OUT``.

The package (format 0.5 of the bioimage.io model description, written with
``bioimageio.spec``) holds:

- ``rdf.yaml``: one input ``raw`` (batch, channel, y, x; float32 ADU) with the per-image
  z-score as its preprocessing (``zero_mean_unit_variance`` over channel, y and x), one
  output ``foreground`` (the foreground probability: the U-Net's logit, ``sigmoid`` as the
  postprocessing; foreground where it is > 0.5, the threshold :data:`THRESHOLD` stated in
  ``config.fluorobench_c``);
- ``pytorch_state_dict`` weights with their architecture source
  (:mod:`synthesis.models.unet_portable`, plain torch) and ``torchscript`` weights (that
  architecture scripted);
- a test input (the package's first ``test`` row) and the test output of our own U-Net
  (:class:`synthesis.models.unet.UNet`, our z-score), so ``bioimageio test`` checks the
  portable copy against our model within the stated reproducibility tolerance
  (:data:`TOLERANCE`);
- documentation (the package's training record of the model), a cover image, authors,
  citations, the licence of the package's masks, and the training data: the FluoroBench-C
  package, its config and the sha256 of its ``manifest.json``.

Nothing here reaches the network: the description names no URL, so validating it with
input/output checks on (``bioimageio test``) only hashes local files. ``bioimageio.spec`` and
``bioimageio.core`` are the optional ``bioimageio`` extra.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from builder.package.manifest import config_manifest
from synthesis.levels import CONFIG_TITLES, PIXEL_SIZE_UM
from synthesis.runtime.errors import InputError, RefusedError
from synthesis.runtime.extras import missing_extra
from synthesis.runtime.files import sha256_file

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("bioimageio",)
#: Foreground where the exported output (a probability) exceeds this.
THRESHOLD = 0.5
#: The reproducibility tolerance stated in the package: the portable architecture and the
#: TorchScript weights reproduce our U-Net's test output to float32 rounding (~1e-6).
TOLERANCE = {"relative_tolerance": 1e-4, "absolute_tolerance": 1e-4}
#: The benchmark's references (the published benchmark it follows).
CITATIONS = (
    {
        "text": "Zhong, Li & Yang (2024): robustness benchmarks of fluorescence microscopy "
        "segmentation. BMC Bioinformatics 25:269",
        "doi": "10.1186/s12859-024-05894-4",
    },
)
#: bioimage.io wants SPDX licence ids; the card's Hub ids -> SPDX.
SPDX = {"cc-by-4.0": "CC-BY-4.0", "cc0-1.0": "CC0-1.0", "apache-2.0": "Apache-2.0"}


def bioimageio_missing() -> str | None:
    """None when ``bioimageio.spec`` and ``bioimageio.core`` import, else how to install them."""
    return missing_extra("bioimageio", ("bioimageio.spec", "bioimageio.core"))


def export_bioimageio(
    package: str | Path, config: str, out: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the reference U-Net of ``config`` in the package ``package`` as a bioimage.io
    model package: the folder ``out`` (``rdf.yaml`` and its files), or a zip when ``out``
    ends in ``.zip``. Written under a temporary name beside ``out`` and renamed; returns
    ``out``.

    Raises:
        InputError: not a package, no such config or reference model, an empty ``test``
            split, or the bioimageio extra not installed.
        RefusedError: ``out`` exists and ``overwrite`` is False.
    """
    package, out = Path(package), Path(out)
    missing = bioimageio_missing()
    if missing:
        raise InputError(f"export-model --format bioimageio {missing}")
    manifest = config_manifest(package, config)
    weights = package / "models" / f"{config}-unet.safetensors"
    if not weights.is_file():
        raise InputError(f"{weights}: the package has no reference model for {config}")
    if "test" not in manifest["configs"][config]["splits"]:
        raise InputError(f"{package} config {config} has no test split for the test tensors")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise RefusedError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staged = Path(tmp) / "files"
        staged.mkdir()
        descr = _describe(package, manifest, config, weights, staged)
        built = Path(tmp) / ("package.zip" if out.suffix == ".zip" else "package")
        _save(descr, built)
        if out.exists() or out.is_symlink():
            _remove(out)
        built.rename(out)
    logger.info("bioimage.io package of %s's reference U-Net: %s", config, out)
    return out


def _save(descr: Any, target: Path) -> None:
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    if target.suffix == ".zip":
        save_bioimageio_package(descr, output_path=target)
    else:
        save_bioimageio_package_as_folder(descr, output_path=target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _test_row(package: Path, config: str) -> tuple[Any, str]:
    """The first ``test`` row's image (float32 ``(1, 1, H, W)`` ADU) and id."""
    import torch

    import fluorobench_c

    ds = fluorobench_c.load(str(package), config, "test", columns=fluorobench_c.MODEL_COLUMNS)
    for row in ds:
        batch = fluorobench_c.collate([row])
        return batch["image"].to(torch.float32), str(row["id"])
    raise InputError(f"{package} config {config}: the test split is empty")


def _describe(
    package: Path, manifest: dict[str, Any], config: str, weights: Path, staged: Path
) -> Any:
    """The ``ModelDescr`` of the U-Net, its files written into ``staged``."""
    import numpy as np
    import tifffile
    import torch
    from bioimageio.spec.model import v0_5 as bio

    from builder.package.card import licence_of, source_kinds
    from synthesis.metrics import check_logits
    from synthesis.models import unet_portable
    from synthesis.models.unet import load_model
    from synthesis.normalize import STD_FLOOR, normalize
    from synthesis.thread_invariant import model_threads

    cpu = torch.device("cpu")
    model, record = load_model(weights, device=cpu)
    model.eval()
    arch = {k: int(v) for k, v in model.hparams.items()}
    if arch["in_channels"] != 1 or arch["out_channels"] != 1:
        raise InputError(f"{weights}: expected a one-channel U-Net. Got {arch}")
    image, row_id = _test_row(package, config)
    with torch.no_grad(), model_threads(cpu):
        logits = check_logits(model(normalize(image, "zscore")), image)
    probability = torch.sigmoid(logits)

    portable = unet_portable.UNet(**arch)
    portable.load_state_dict(model.state_dict(), strict=True)
    portable.eval()
    state_path = staged / "weights.pt"
    torch.save(portable.state_dict(), state_path)
    script_path = staged / "weights_torchscript.pt"
    torch.jit.script(portable).save(str(script_path))
    arch_path = staged / "unet_portable.py"
    shutil.copyfile(unet_portable.__file__, arch_path)
    input_path, output_path = staged / "test_input.npy", staged / "test_output.npy"
    np.save(input_path, image.numpy().astype(np.float32))
    np.save(output_path, probability.numpy().astype(np.float32))
    cover = staged / "cover.png"
    _write_cover(image[0, 0].numpy(), probability[0, 0].numpy(), cover)
    sample_in, sample_out = staged / "sample_input.tif", staged / "sample_output.tif"
    tifffile.imwrite(sample_in, image[0, 0].numpy().astype(np.float32))
    tifffile.imwrite(sample_out, probability[0, 0].numpy().astype(np.float32))

    manifest_sha = sha256_file(package / "manifest.json")
    weights_sha = sha256_file(weights)
    licence = licence_of(
        source_kinds({**manifest, "configs": {config: manifest["configs"][config]}})
    )
    spdx = SPDX.get(licence["license"])
    if spdx is None:
        logger.warning(
            "%s: the package's masks carry no SPDX licence (%s); the model is given CC-BY-4.0",
            package,
            licence["license"],
        )
        spdx = "CC-BY-4.0"
    doc = staged / "README.md"
    doc.write_text(
        _documentation(package, config, arch, weights_sha, manifest_sha, row_id), encoding="utf-8"
    )
    data_doc = staged / "training_data.md"
    data_doc.write_text(_data_documentation(package, manifest, config, manifest_sha))

    step = 2 ** (arch["depth"] - 1)
    size = bio.ParameterizedSize(min=step, step=step)
    in_id, out_id = bio.TensorId("raw"), bio.TensorId("foreground")
    version = bio.Version(torch.__version__.split("+")[0])
    pixel = PIXEL_SIZE_UM.get(config)
    space_kw: dict[str, Any] = {"unit": "micrometer", "scale": pixel} if pixel else {}
    inputs = [
        bio.InputTensorDescr(
            id=in_id,
            description="fluorescence image in camera grey levels (ADU), one channel",
            axes=[
                bio.BatchAxis(),
                bio.ChannelAxis(channel_names=[bio.Identifier("fluorescence")]),
                bio.SpaceInputAxis(id=bio.AxisId("y"), size=size, **space_kw),
                bio.SpaceInputAxis(id=bio.AxisId("x"), size=size, **space_kw),
            ],
            test_tensor=bio.FileDescr(source=input_path),
            sample_tensor=bio.FileDescr(source=sample_in),
            data=bio.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                bio.ZeroMeanUnitVarianceDescr(
                    kwargs=bio.ZeroMeanUnitVarianceKwargs(
                        axes=[bio.AxisId("channel"), bio.AxisId("y"), bio.AxisId("x")],
                        eps=STD_FLOOR,
                    )
                )
            ],
        )
    ]
    outputs = [
        bio.OutputTensorDescr(
            id=out_id,
            description=f"foreground probability; foreground where > {THRESHOLD}",
            axes=[
                bio.BatchAxis(),
                bio.ChannelAxis(channel_names=[bio.Identifier("foreground")]),
                bio.SpaceOutputAxis(
                    id=bio.AxisId("y"),
                    size=bio.SizeReference(tensor_id=in_id, axis_id=bio.AxisId("y")),
                    **space_kw,
                ),
                bio.SpaceOutputAxis(
                    id=bio.AxisId("x"),
                    size=bio.SizeReference(tensor_id=in_id, axis_id=bio.AxisId("x")),
                    **space_kw,
                ),
            ],
            test_tensor=bio.FileDescr(source=output_path),
            sample_tensor=bio.FileDescr(source=sample_out),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[bio.SigmoidDescr()],
        )
    ]
    weights_descr = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=state_path,
            architecture=bio.ArchitectureFromFileDescr(
                source=arch_path, callable=bio.Identifier("UNet"), kwargs=arch
            ),
            pytorch_version=version,
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=script_path, pytorch_version=version, parent="pytorch_state_dict"
        ),
    )
    title = CONFIG_TITLES[config]
    return bio.ModelDescr(
        name=f"FluoroBench-C reference U-Net {config}",
        description=f"U-Net segmenting {title} in synthetic fluorescence images "
        "(FluoroBench-C reference model: the one its transfer attacks were made against)",
        authors=[bio.Author(name="FluoroBench-C developers")],
        cite=[bio.CiteEntry(text=c["text"], doi=bio.Doi(c["doi"])) for c in CITATIONS],
        license=bio.LicenseId(spdx),
        documentation=bio.FileDescr(source=doc),
        covers=[bio.FileDescr(source=cover)],
        tags=["fluorescence", "segmentation", "2d", "u-net", "pytorch", config],
        inputs=inputs,
        outputs=outputs,
        weights=weights_descr,
        training_data=_training_data(package, manifest, config, manifest_sha, data_doc),
        config=bio.Config(
            bioimageio=bio.BioimageioConfig(
                reproducibility_tolerance=[bio.ReproducibilityTolerance(**TOLERANCE)]
            ),
            fluorobench_c={
                "config": config,
                "threshold": THRESHOLD,
                "package_version": manifest.get("package_version"),
                "manifest_sha256": manifest_sha,
                "weights_sha256": weights_sha,
                "architecture": arch,
                "test_row": row_id,
                "pixel_size_um": pixel,
            },
        ),
    )


def _training_data(
    package: Path, manifest: dict[str, Any], config: str, sha: str, doc: Path
) -> Any:
    """The training data: the FluoroBench-C package (inline dataset description; no
    ``source`` URL, which validation would fetch)."""
    from bioimageio.spec.dataset import v0_3 as ds

    recipe = manifest.get("recipe", {})
    counts = manifest["configs"][config].get("source", {}).get("counts") or recipe.get("counts")
    return ds.DatasetDescr(
        name=f"FluoroBench-C {config}",
        description=f"FluoroBench-C package {package.name}, config {config}, train split "
        f"(manifest.json sha256 {sha}; rows per split {json.dumps(counts, sort_keys=True)})",
        authors=[ds.Author(name="FluoroBench-C developers")],
        cite=[ds.CiteEntry(text=c["text"], doi=ds.Doi(c["doi"])) for c in CITATIONS],
        license=ds.LicenseId("CC-BY-4.0"),
        documentation=ds.FileDescr(source=doc),
        tags=["fluorescence", "synthetic", "benchmark", config],
        config={"fluorobench_c": {"manifest_sha256": sha, "config": config, "recipe": recipe}},
    )


def _documentation(
    package: Path, config: str, arch: dict[str, int], weights_sha: str, manifest_sha: str, row: str
) -> str:
    from builder.package.model_repos import training_notes

    return f"""# FluoroBench-C reference U-Net: {CONFIG_TITLES[config]}

The reference model of the FluoroBench-C package `{package.name}` (config `{config}`): the
U-Net its transfer-attack splits were made against. Original weights: safetensors sha256
`{weights_sha}`; the package's `manifest.json` sha256 is `{manifest_sha}`.

## Input and output

- Input `raw`: one fluorescence image in camera grey levels (ADU), axes batch, channel, y, x;
  any size that is a multiple of {2 ** (arch["depth"] - 1)} pixels. Preprocessing: per-image
  z-score (`zero_mean_unit_variance` over channel, y, x).
- Output `foreground`: the foreground probability (sigmoid of the U-Net's logit); the
  benchmark counts a pixel as foreground where it is > {THRESHOLD}.
- Architecture: plain-torch U-Net with batch norm, `{json.dumps(arch, sort_keys=True)}`
  (`unet_portable.py`); TorchScript weights of the same network.
- Test tensors: the package's `test` row `{row}` and our own model's output on it.

## Training

{training_notes(package, config)}

## Validation

`bioimageio test` reproduces the test output (our own U-Net's, computed with the benchmark's
z-score) from the test input with both weights formats, within the stated tolerance
(relative and absolute {TOLERANCE["relative_tolerance"]:g}). The model's scores on every split
of its package are in the package's `results/{config}.json` and dataset card.

## Score it on FluoroBench-C

`fluorobench-c evaluate --data PACKAGE --config {config} --model rdf.yaml --out results/`

## Intended use and limits

A reference for the benchmark's transfer attacks and a baseline to compare against; it was
trained on synthetic images of the benchmark (`train` split) and is not a model for real
microscopy data.
"""


def _data_documentation(
    package: Path, manifest: dict[str, Any], config: str, manifest_sha: str
) -> str:
    splits = manifest["configs"][config]["splits"]
    rows = "\n".join(f"| `{name}` | {entry.get('num_rows', 0)} |" for name, entry in splits.items())
    recipe = json.dumps(manifest.get("recipe", {}), indent=2, sort_keys=True)
    return f"""# Training data: FluoroBench-C `{config}`

The FluoroBench-C package `{package.name}` (version {manifest.get("package_version")}),
config `{config}`: synthetic fluorescence images with exact ground truth, degraded in one
controlled way per split. The model was trained on its `train` split. The package's
`manifest.json` (every shard's sha256) has sha256 `{manifest_sha}`.

| split | rows |
|---|---:|
{rows}

Recipe (the arguments that made the package):

```json
{recipe}
```
"""


def _write_cover(image: Any, probability: Any, path: Path) -> None:
    """A cover image: the test input (percentile-scaled) beside the output probability."""
    import numpy as np
    from PIL import Image

    from builder.package.shards import preview_pixels

    left = preview_pixels(image)
    right = np.clip(np.rint(probability * 255.0), 0, 255).astype(np.uint8)
    gap = np.full((left.shape[0], 4), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(path)
