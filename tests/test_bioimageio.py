"""bioimage.io models in and out: ``export-model --format bioimageio`` (the package passes
``bioimageio test`` and round-trips through ``bioimageio.core``), and ``evaluate --model
rdf.yaml`` (the same IoU as the same U-Net through our own loader; attacks on it; the
pipeline path without gradients; the errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from builder.cli import main

pytest.importorskip("bioimageio.core")

BUILD = [
    *("--config", "mito"),
    *("--splits", "reference", "snr_2", "sib_3"),
    *("--train", "1", "--validation", "1", "--test", "3", "--batch-size", "3"),
    *("--seed", "3", "--device", "cpu"),
]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mito package whose reference model is a small U-Net (base 4, depth 3)."""
    from synthesis.models.unet import UNet, save_model

    out = tmp_path_factory.mktemp("bio") / "pkg"
    assert main(["build", str(out), *BUILD]) == 0
    save_model(
        UNet(base_channels=4, depth=3, seed=5),
        out / "models" / "mito-unet.safetensors",
        metadata={},
    )
    return out


@pytest.fixture(scope="module")
def exported(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bio-out") / "mito-unet"
    assert (
        main(["export-model", str(package), "--config", "mito", "--format", "bioimageio", str(out)])
        == 0
    )
    return out


def _edit(exported: Path, tmp_path: Path, change) -> Path:
    """A copy of the exported package with its rdf.yaml changed by ``change(dict)``."""
    folder = tmp_path / "edited"
    shutil.copytree(exported, folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    change(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return folder / "rdf.yaml"


def test_exported_package_passes_bioimageio_test(exported: Path):
    from bioimageio.core import test_model

    rdf = yaml.safe_load((exported / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["source"] == "unet_portable.py"
    assert (
        rdf["config"]["fluorobench_c"]["manifest_sha256"]
        == rdf["training_data"]["config"]["fluorobench_c"]["manifest_sha256"]
    )
    assert len(rdf["config"]["fluorobench_c"]["manifest_sha256"]) == 64
    assert rdf["license"] == "CC-BY-4.0" and rdf["cite"] and rdf["documentation"]
    summary = test_model(exported / "rdf.yaml")  # what `bioimageio test` runs, offline
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = [d.name for d in summary.details]
    assert any("Reproduce test outputs" in n and "torchscript" in n for n in names)
    assert any("Reproduce test outputs" in n and "pytorch_state_dict" in n for n in names)


def test_round_trip_through_bioimageio_core_matches_our_model(package: Path, exported: Path):
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_model_description

    import fluorobench_c
    from synthesis.models.unet import load_model
    from synthesis.normalize import normalize

    descr = load_model_description(exported / "rdf.yaml", perform_io_checks=False)
    tol = descr.config.bioimageio.reproducibility_tolerance[0]
    model, _ = load_model(package / "models" / "mito-unet.safetensors")
    rows = list(fluorobench_c.load(str(package), "mito", "snr_2"))
    images = torch.from_numpy(np.stack([r["image"] for r in rows]).astype(np.float32))[:, None]
    with torch.no_grad():
        ours = torch.sigmoid(model.eval()(normalize(images))).numpy()
    for fmt in ("pytorch_state_dict", "torchscript"):
        pipeline = create_prediction_pipeline(descr, weights_format=fmt, devices=["cpu"])
        for i in range(len(rows)):
            sample = create_sample_for_model(descr, inputs={"raw": images[i : i + 1].numpy()})
            out = pipeline.predict_sample_without_blocking(sample).members["foreground"]
            theirs = out.data.transpose("batch", "channel", "y", "x").values
            np.testing.assert_allclose(
                theirs, ours[i : i + 1], rtol=tol.relative_tolerance, atol=tol.absolute_tolerance
            )


def _evaluate(package: Path, out: Path, model: str, *extra: str) -> dict:
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--out", str(out)]
    argv += ["--model", model, "--splits", "test", "snr_2", "sib_3", "--device", "cpu", *extra]
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def test_evaluate_bioimageio_model_equals_our_loader(package: Path, exported: Path, tmp_path):
    weights = str(package / "models" / "mito-unet.safetensors")
    ours = _evaluate(package, tmp_path / "ours", weights, "--attacks", "fgsm:4")
    theirs = _evaluate(package, tmp_path / "bio", str(exported / "rdf.yaml"), "--attacks", "fgsm:4")
    for split in ("test", "snr_2", "sib_3"):
        a, b = ours["splits"][split], theirs["splits"][split]
        assert (a["predicted_pixels"], a["dice"]) == (b["predicted_pixels"], b["dice"]), split
        assert a["iou"] == b["iou"] and 0.0 < a["iou"] < 1.0, split
    # the white-box attack runs through the bioimage.io model's own preprocessing
    assert theirs["splits"]["whitebox_fgsm_4"]["iou"] == pytest.approx(
        ours["splits"]["whitebox_fgsm_4"]["iou"], abs=0.01
    )
    assert theirs["splits"]["whitebox_fgsm_4"]["iou"] != theirs["splits"]["test"]["iou"]
    assert theirs["model"]["normalize"] == "none" and "attacks_skipped" not in theirs["model"]
    assert "pytorch_state_dict" in theirs["model"]["description"]


def test_evaluate_zip_package_without_gradients_skips_attacks(
    package: Path, exported: Path, tmp_path: Path, monkeypatch, caplog
):
    """A model whose weights have no gradients runs through bioimageio.core's pipeline:
    the same IoU, white-box attacks skipped with the reason in results.json."""
    from bioimageio.spec import save_bioimageio_package

    from builder.evaluation import bioimageio_models

    zipped = save_bioimageio_package(exported / "rdf.yaml", output_path=tmp_path / "model.zip")
    monkeypatch.setattr(bioimageio_models, "TORCH_FORMATS", ())  # as for ONNX weights
    ours = _evaluate(package, tmp_path / "ours", str(package / "models" / "mito-unet.safetensors"))
    theirs = _evaluate(package, tmp_path / "zip", str(zipped), "--attacks", "fgsm:4")
    for split in ("test", "snr_2", "sib_3"):
        assert theirs["splits"][split]["iou"] == ours["splits"][split]["iou"], split
    assert "whitebox_fgsm_4" not in theirs["splits"]
    assert "fgsm:4 skipped" in theirs["model"]["attacks_skipped"]
    assert "without gradients" in theirs["model"]["attacks_skipped"]
    assert "skipped" in caplog.text


def test_output_mapping_threshold_and_channel(exported: Path, tmp_path: Path):
    from builder.evaluation.bioimageio_models import BioimageioModelError, load_bioimageio_model

    def raw_scores(rdf):  # no sigmoid, no declared range: an unbounded score
        out = rdf["outputs"][0]
        out["postprocessing"] = []
        out["data"].pop("range")

    rdf = _edit(exported, tmp_path, raw_scores)
    with pytest.raises(BioimageioModelError, match="cannot be mapped to a foreground mask"):
        load_bioimageio_model(str(rdf), torch.device("cpu"))
    info = load_bioimageio_model(str(rdf), torch.device("cpu"), threshold=0.0)
    x = torch.from_numpy(np.load(exported / "test_input.npy"))
    expected = np.load(exported / "test_output.npy") > 0.5
    with torch.no_grad():
        got = (info.model(x) > 0).numpy()
    assert (got == expected).mean() > 0.999  # logit > 0 is probability > 0.5
    with pytest.raises(BioimageioModelError, match="no channel 'nuclei'"):
        load_bioimageio_model(str(rdf), torch.device("cpu"), threshold=0.0, channel="nuclei")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rdf: rdf.update(type="dataset"), "not a model"),
        (lambda rdf: rdf["inputs"].append({**rdf["inputs"][0], "id": "raw2"}), "2 inputs"),
        (
            lambda rdf: rdf["outputs"][0]["axes"][1].update(channel_names=["bg", "fg"]),
            "state the foreground one with --channel",
        ),
    ],
    ids=["dataset", "two-inputs", "two-channels"],
)
def test_evaluate_refuses_what_it_cannot_score(
    package: Path, exported: Path, tmp_path: Path, capsys, change, message
):
    rdf = _edit(exported, tmp_path, change)
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--out", str(tmp_path / "r")]
    assert main([*argv, "--model", str(rdf), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(rdf) in err
    assert not (tmp_path / "r").exists()


def test_threshold_is_for_bioimageio_models_only(package: Path, tmp_path: Path, capsys):
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--out", str(tmp_path / "r")]
    argv += ["--threshold", "0.3", "--device", "cpu"]
    assert main(argv) == 2
    assert "apply to bioimage.io models" in capsys.readouterr().err


def test_export_model_refuses_an_existing_path(package: Path, exported: Path, tmp_path, capsys):
    before = (exported / "rdf.yaml").read_bytes()
    argv = ["export-model", str(package), "--config", "mito", str(exported)]
    assert main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (exported / "rdf.yaml").read_bytes() == before
    zipped = tmp_path / "mito.zip"
    assert main(["export-model", str(package), "--config", "mito", str(zipped)]) == 0
    import zipfile

    with zipfile.ZipFile(zipped) as z:
        assert "rdf.yaml" in z.namelist() and "weights_torchscript.pt" in z.namelist()
    assert not list(tmp_path.glob(".mito.zip*"))  # no temporary left behind


def test_publish_puts_the_bioimageio_package_in_the_model_repo(package: Path, tmp_path: Path):
    """``publish --models-repo ORG/NAME --bioimageio``: the model repo holds the package under
    ``package/`` (``bioimageio.yaml``, as bioimageio.spec reads a Hub repo), and the files as
    uploaded pass ``bioimageio test``."""
    import subprocess
    import sys

    from bioimageio.core import test_model

    from tests.conftest import ROOT
    from tests.hub_server import LoopbackHub, hub_env

    token, repo, models = "hf_fake_write_token_for_tests_b10e", "fluorobench/fb", "fluorobench/u"
    hub = LoopbackHub({token: "tester"})
    try:
        cli = [sys.executable, "-c", "import sys; from builder.cli import main; sys.exit(main())"]
        args = ["publish", str(package), "--repo-id", repo, "--no-load", "--models-repo", models]
        r = subprocess.run(
            [*cli, *args, "--bioimageio"],
            cwd=ROOT,
            env=hub_env(hub.endpoint, tmp_path / "home", token),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"{models}-mito/package/bioimageio.yaml" in r.stdout
        remote = hub.state.files(f"{models}-mito", repo_type="model")
    finally:
        hub.stop()
    assert "model.safetensors" in remote and "package/bioimageio.yaml" in remote
    assert "package/rdf.yaml" not in remote
    local = tmp_path / "downloaded"
    for name, content in remote.items():
        if name.startswith("package/"):
            target = local / name.removeprefix("package/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    assert {"weights.pt", "weights_torchscript.pt", "unet_portable.py"} <= {
        p.name for p in local.iterdir()
    }
    assert test_model(local / "bioimageio.yaml").status == "passed"


def test_publish_bioimageio_needs_models_repo(package: Path, capsys):
    argv = ["publish", str(package), "--repo-id", "fluorobench/fb", "--bioimageio"]
    assert main(argv) == 2
    assert "--bioimageio goes with --models-repo" in capsys.readouterr().err


def test_axis_layouts_round_trip():
    """The image goes into the model's declared axis order and its output comes back as
    ``(B, 1, H, W)``: channel last, no batch axis, a singleton z axis."""
    from builder.evaluation.bioimageio_models import _Axes, _from_model_layout, _to_model_layout

    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 1, 5, 7)
    byxc = _Axes(["batch", "y", "x", "channel"], ["batch", "space", "space", "channel"])
    moved = _to_model_layout(x, byxc)
    assert moved.shape == (2, 5, 7, 1) and torch.equal(moved[..., 0], x[:, 0])
    assert torch.equal(_from_model_layout(moved, byxc, 0), x)
    czyx = _Axes(["channel", "z", "y", "x"], ["channel", "space", "space", "space"], ["z"])
    one = _to_model_layout(x[1:2], czyx)
    assert one.shape == (1, 1, 5, 7) and torch.equal(_from_model_layout(one, czyx, 0), x[1:2])
    two = torch.stack([-moved[..., 0], moved[..., 0]], dim=-1)  # two output channels
    assert torch.equal(_from_model_layout(two, byxc, 1), x)
    assert torch.equal(_from_model_layout(two, byxc, 0), -x)


def test_sizes_the_model_does_not_take_are_padded(package: Path, exported: Path, tmp_path: Path):
    """An input that takes 200 + n * 100 pixels: 256-pixel tiles are padded to 300 and the
    mask cropped back; away from the padded border the prediction is the unpadded one."""
    import hashlib

    from builder.evaluation.bioimageio_models import load_bioimageio_model

    bigger = tmp_path / "test_input_300.npy"  # a test input of a size the model takes
    np.save(
        bigger, np.pad(np.load(exported / "test_input.npy"), [(0, 0), (0, 0), (0, 44), (0, 44)])
    )

    def sizes(rdf):
        for axis in rdf["inputs"][0]["axes"][2:]:
            axis["size"] = {"min": 200, "step": 100}
        rdf["inputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(bigger.read_bytes()).hexdigest()

    rdf = _edit(exported, tmp_path, sizes)
    shutil.copyfile(bigger, rdf.parent / "test_input.npy")
    padded = load_bioimageio_model(str(rdf), torch.device("cpu"))
    assert padded.no_gradients is None  # the torch form, checked against bioimageio.core
    plain = load_bioimageio_model(str(exported / "rdf.yaml"), torch.device("cpu"))
    x = torch.from_numpy(np.load(exported / "test_input.npy"))
    with torch.no_grad():
        a, b = padded.model(x), plain.model(x)
    assert a.shape == b.shape == x.shape
    torch.testing.assert_close(a[..., :200, :200], b[..., :200, :200], rtol=1e-4, atol=1e-4)


def test_without_the_extra_the_error_says_how_to_install(
    package: Path, tmp_path: Path, monkeypatch, capsys
):
    import sys

    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # as if not installed
    rdf = tmp_path / "rdf.yaml"
    rdf.write_text("type: model\n")
    argv = ["evaluate", "--data", str(package), "--config", "mito", "--out", str(tmp_path / "r")]
    assert main([*argv, "--model", str(rdf), "--device", "cpu"]) == 2
    assert 'pip install "fluorobench-c[bioimageio]"' in capsys.readouterr().err
    out = tmp_path / "m"
    assert main(["export-model", str(package), "--config", "mito", str(out)]) == 2
    assert 'pip install "fluorobench-c[bioimageio]"' in capsys.readouterr().err
    assert not out.exists()
