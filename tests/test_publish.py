"""Publishing: round trip through a Hub-compatible server on loopback, resume, refusals, card,
model repos (their failures typed and the token never shown).

The hub (``tests/hub_server.py``) runs in this process on 127.0.0.1; ``fluorobench-c publish``
and ``load_dataset`` run in subprocesses, because ``huggingface_hub`` and ``datasets`` read
``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET`` at import time.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builder.cli import main
from builder.package.card import card_metadata, render_card
from builder.package.manifest import split_files
from builder.package.publish import (
    LocalFile,
    PublishError,
    PublishRefused,
    RemoteFile,
    make_plan,
    publish,
)
from builder.package.samples import MAX_PNG_BYTES, grid_rows
from tests.conftest import ROOT
from tests.hub_server import LoopbackHub, hub_env, row_digest

TOKEN = "hf_fake_write_token_for_tests_7c1d"  # not a real token: the loopback hub's only one
REPO = "fluorobench/fluorobench-c"
CONFIGS = ("er", "mito", "nucleus")
#: A small real build: every config, a split of each image family. No attack split: it would
#: train and evaluate a reference model per config (minutes on 2 cores); the model files it
#: adds are published like any other file.
BUILD = [
    *("--config", *CONFIGS),
    *("--splits", "reference", "clean", "snr_2"),
    *("--train", "1", "--validation", "1", "--test", "2", "--batch-size", "2"),
    *("--seed", "5", "--device", "cpu"),
]
#: The installed ``fluorobench-c`` entry point (``builder.cli:main``), without installing it.
CLI = [sys.executable, "-c", "import sys; from builder.cli import main; sys.exit(main())"]
#: The CLI imports only the running sub-command's module, so ``publish`` runs stay light.
PUBLISH_CLI = CLI
#: Routes that change the hub; a refused or dry run must send none of them.
WRITES = ("create", "branch", "preupload", "lfs_batch", "lfs_put", "commit")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("publish") / "fluorobench-c"
    assert main(["build", str(out), *BUILD]) == 0
    return out


@pytest.fixture
def hub():
    server = LoopbackHub({TOKEN: "tester"})
    yield server
    server.stop()


def _run(
    hub: LoopbackHub,
    home: Path,
    args: list[str],
    *,
    token: str | None = TOKEN,
    endpoint: str | None = None,
    timeout: float = 120,
    full_cli: bool = False,
) -> subprocess.CompletedProcess[str]:
    env = hub_env(endpoint or hub.endpoint, home, token)
    r = subprocess.run(
        [*(CLI if full_cli else PUBLISH_CLI), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if token:  # never printed, whatever happened
        assert token not in r.stdout + r.stderr
    return r


def _publish(
    hub: LoopbackHub, home: Path, out: Path, *extra: str, **kw
) -> subprocess.CompletedProcess[str]:
    return _run(hub, home, ["publish", str(out), "--repo-id", REPO, *extra], **kw)


def _writes(hub: LoopbackHub) -> list[tuple[str, str, str]]:
    return [r for r in hub.state.requests if r[1] in WRITES]


def _local_files(out: Path) -> dict[str, bytes]:
    manifest = json.loads((out / "manifest.json").read_text())
    files = {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(out).parts)
    }
    files["README.md"] = render_card(manifest, repo=REPO, out=out).encode()
    return files


def _remote_files(hub: LoopbackHub, rev: str = "main") -> dict[str, bytes]:
    files = hub.state.files(REPO, rev)
    files.pop(".gitattributes")
    return files


def _stored_objects(hub: LoopbackHub) -> set[str]:
    with hub.state.lock:
        return set(hub.state.repos[("dataset", REPO)].lfs)


def _local_rows(out: Path, config: str, split: str, *, decode: bool) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for rel in split_files(manifest, config, split):
        rows += pq.read_table(out / rel).to_pylist()
    if decode:
        for r in rows:
            for k in ("image", "preview", "mask", "instances"):
                if r.get(k) is not None:
                    r[k] = np.asarray(Image.open(io.BytesIO(r[k]["bytes"])))
    return [row_digest(r) for r in rows]


# --------------------------------------------------------------------------- round trip
def test_round_trip_every_config_streaming_and_not(package: Path, hub: LoopbackHub, tmp_path: Path):
    args = ["-v", "publish", str(package), "--repo-id", REPO]  # full verify, debug logging
    r = _run(hub, tmp_path / "home", args, full_cli=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"published {hub.endpoint}/datasets/{REPO}" in r.stdout
    local = _local_files(package)
    assert "images/nucleus_samples.png" in local and "data/er/clean-00000-of-00001.parquet" in local
    assert _remote_files(hub) == local  # byte for byte, README rendered for the repo id
    assert f'load_dataset("{REPO}", "mito"' in local["README.md"].decode()  # the default config
    assert not any(p.startswith(".") for p in hub.state.files(REPO) if p != ".gitattributes")

    manifest = json.loads((package / "manifest.json").read_text())
    # Streamed: the float32 split and a noisy one of every config; non-streaming (fresh
    # cache): every split of every config.
    stream = [
        f"{c}/{s}"
        for c in CONFIGS
        for s in ("clean", "snr_2")
        if s in manifest["configs"][c]["splits"]
    ]
    result = tmp_path / "loaded.json"
    loader = [
        *("-m", "tests.hub_server", "load", REPO, str(result)),
        *("--cache", str(tmp_path / "fresh-cache"), "--stream", *stream, "--full", *CONFIGS),
    ]
    env = hub_env(hub.endpoint, tmp_path / "reader", None)  # an anonymous user, empty caches
    p = subprocess.run(
        [sys.executable, *loader], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = json.loads(result.read_text())
    for item in stream:
        config, split = item.split("/")
        assert loaded["stream"][item] == _local_rows(package, config, split, decode=True), item
    for config in CONFIGS:
        assert set(loaded["full"][config]) == set(manifest["configs"][config]["splits"])
        for split, rows in loaded["full"][config].items():
            assert rows == _local_rows(package, config, split, decode=False), (config, split)
    assert hub.state.ranges > 0  # streaming read the shards by byte ranges

    # Re-publishing the unchanged folder uploads nothing and makes no commit.
    history = hub.state.history(REPO)
    hub.state.requests.clear()
    r = _publish(hub, tmp_path / "home", package, "--no-load")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "up to date" in r.stdout
    assert _writes(hub) == [] and hub.state.history(REPO) == history


def test_dry_run_lists_files_and_card_and_changes_nothing(
    package: Path, hub: LoopbackHub, tmp_path: Path
):
    r = _publish(hub, tmp_path / "home", package, "--dry-run", "--no-load", token=None)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "dry run: nothing is uploaded" in out and "it would be created" in out
    for path in _local_files(package):
        assert re.search(rf"^  new +[\d.]+ [kM]B  {re.escape(path)}$", out, flags=re.M), path
    card = out.split("--- README.md (the dataset card) ---", 1)[1]
    assert card.strip() == _local_files(package)["README.md"].decode().strip()
    assert _writes(hub) == [] and not hub.state.repos


# --------------------------------------------------------------------------- interruptions
def test_interrupted_uploads_resume_without_resending(
    package: Path, hub: LoopbackHub, tmp_path: Path
):
    args = ["publish", str(package), "--repo-id", REPO, "--no-load", "--files-per-commit", "4"]
    local = _local_files(package)
    lfs_local = {p for p in local if p.endswith((".parquet", ".safetensors", ".png"))}
    n_commits = -(-(len(local) - 2) // 4) + 1  # body commits + the card/manifest commit

    # 1. The Hub fails the 2nd commit: one clear line, exit 1, the 1st commit stays.
    hub.state.add_fault("commit", after=1, status=500)
    r = _run(hub, tmp_path / "home", args)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()[-1]
    assert "upload interrupted" in err and f"1 of {n_commits} commits were made" in err, err
    assert "Re-run the same command to resume" in err
    assert len(_remote_files(hub)) == 4

    # 2. The re-run is killed (SIGKILL) while its 6th upload hangs (in its 2nd commit).
    fault = hub.state.add_fault("lfs_put", after=5, status=None)
    env = hub_env(hub.endpoint, tmp_path / "home", TOKEN)
    cmd = [*PUBLISH_CLI, *args]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert fault.reached.wait(90), "the publisher never reached the hanging upload"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        fault.release.set()
    assert proc.returncode == -signal.SIGKILL
    partial = _remote_files(hub)
    assert len(partial) > 4 and all(local[p] == b for p, b in partial.items())  # whole commits
    assert "README.md" not in partial  # the card comes last
    stored = _stored_objects(hub)
    assert 0 < len(stored) < len(lfs_local)

    # 3. The same command again completes, sending only the objects the hub lacks.
    hub.state.requests.clear()
    r = _run(hub, tmp_path / "home", args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _remote_files(hub) == local
    assert hub.state.count("lfs_put") == len(lfs_local) - len(stored)  # nothing sent twice
    assert re.search(r"\((\d+)/\1\)$", hub.state.history(REPO)[0])  # the last of its run


# --------------------------------------------------------------------------- refusals
def test_no_token_rejected_token_and_network_down(package: Path, hub: LoopbackHub, tmp_path: Path):
    r = _publish(hub, tmp_path / "home", package, "--no-load", token=None)
    assert r.returncode == 2
    assert "no Hugging Face token" in r.stderr and "HF_TOKEN" in r.stderr
    assert "nothing was uploaded" in r.stderr

    wrong = "hf_not_the_right_token_0000"
    r = _publish(hub, tmp_path / "home", package, "--no-load", token=wrong)
    assert r.returncode == 2
    assert "rejected HF_TOKEN (HTTP 401)" in r.stderr and wrong not in r.stdout + r.stderr
    assert _writes(hub) == []

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = _publish(hub, tmp_path / "home", package, "--no-load", endpoint=dead, timeout=60)
    assert r.returncode == 1
    assert f"cannot reach the Hub at {dead}" in r.stderr and "re-run" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr  # one clear line, no traceback
    # A dry run still plans, listing every file (in-process: the endpoint is passed in).
    result = publish(package, REPO, dry_run=True, load_check=False, endpoint=dead, token=None)
    assert result.plan.remote == "unknown" and "could not read" in result.plan.note
    assert len(result.plan.new) == len(_local_files(package)) and result.commits == []


@pytest.mark.parametrize(
    "repo_id",
    ["no-slash", "a/b/c", "org/bad--name", "-org/name", "org/name.git", "org/na me", "/x"],
)
def test_malformed_repo_id_exit_2(package: Path, repo_id: str, capsys):
    assert main(["publish", str(package), f"--repo-id={repo_id}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--repo-id" in err and repr(repo_id) in err  # huggingface_hub's rule, named
    assert len(err.splitlines()) == 1


def test_folder_failing_verify_is_refused(package: Path, hub: LoopbackHub, tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(package, bad)
    shard = sorted((bad / "data" / "mito").glob("snr_2-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PublishRefused, match="fails verify") as err:
        publish(bad, REPO, load_check=False, endpoint=hub.endpoint, token=TOKEN)
    assert str(shard) in str(err.value) and "sha256" in str(err.value)
    assert hub.state.requests == []  # refused before contacting the Hub


def test_other_content_needs_overwrite(package: Path, hub: LoopbackHub, tmp_path: Path):
    hub.state.seed(REPO, {"notes.txt": b"someone's notes\n", "data/old.parquet": b"PAR1 old"})
    history = hub.state.history(REPO)
    r = _publish(hub, tmp_path / "home", package, "--no-load")
    assert r.returncode == 2
    assert "already holds other content" in r.stderr and "notes.txt" in r.stderr
    assert "--overwrite" in r.stderr
    assert _writes(hub) == [] and hub.state.history(REPO) == history

    r = _publish(
        hub, tmp_path / "home", package, "--no-load", "--overwrite", "--commit-message", "v1"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert _remote_files(hub) == _local_files(package)  # old files deleted
    assert hub.state.history(REPO)[:2] == ["v1 (2/2)", "v1 (1/2)"]  # card + deletions last


def test_revision_branch_and_private(package: Path, hub: LoopbackHub, tmp_path: Path):
    r = _publish(hub, tmp_path / "home", package, "--no-load", "--private", "--revision", "v1")
    assert r.returncode == 0, r.stderr[-3000:]
    repo = hub.state.repos[("dataset", REPO)]
    assert repo.private
    assert _remote_files(hub, "v1") == _local_files(package)
    assert _remote_files(hub, "main") == {}  # main untouched

    other = "fluorobench/public-one"
    hub.state.seed(other, {})
    r = _run(
        hub,
        tmp_path / "home",
        ["publish", str(package), "--repo-id", other, "--no-load", "--private"],
    )
    assert r.returncode == 2 and "exists and is public" in r.stderr
    assert [w for w in _writes(hub) if other in w[2]] == []


# --------------------------------------------------------------------------- plan
def _lf(path: str, content: bytes = b"x") -> LocalFile:
    import hashlib

    return LocalFile(path, len(content), hashlib.sha256(content).hexdigest(), content)


def _rf(f: LocalFile, lfs: bool = True) -> RemoteFile:
    import hashlib

    blob = hashlib.sha1(b"blob %d\0" % f.size + f.read()).hexdigest()
    return RemoteFile(f.path, f.size, blob if not lfs else "0" * 40, f.sha256 if lfs else None)


def test_plan_batches_and_puts_card_and_manifest_last():
    files = [_lf(f"data/x-{i}.parquet", bytes(10 * i + 1)) for i in range(7)]
    files += [_lf("README.md"), _lf("manifest.json")]
    plan = make_plan(files, None, repo_id=REPO, revision="main", files_per_commit=3)
    assert [len(c) for c in plan.commits] == [3, 3, 1, 2]
    assert [f.path for f in plan.commits[-1]] == ["manifest.json", "README.md"]
    plan = make_plan(files, None, repo_id=REPO, revision="main", bytes_per_commit=100)
    assert all(sum(f.size for f in c) <= 100 for c in plan.commits[:-1])
    assert [f.path for f in plan.commits[-1]] == ["manifest.json", "README.md"]


def test_plan_conflicts_overwrite_and_same_package():
    shard, manifest = _lf("data/a.parquet", b"a"), _lf("manifest.json", b"{}")
    card, new_card = _lf("README.md", b"v1"), _lf("README.md", b"v2")
    remote = {f.path: _rf(f, lfs=f.path.endswith(".parquet")) for f in (shard, manifest, card)}
    remote[".gitattributes"] = RemoteFile(".gitattributes", 3, "1" * 40, None)
    # Same package (manifest unchanged), new card: not a conflict, only the card goes up.
    plan = make_plan([shard, manifest, new_card], remote, repo_id=REPO, revision="main")
    assert plan.conflicts == [] and [f.path for f in plan.upload] == ["README.md"]
    assert plan.remote == "this package" and len(plan.commits) == 1
    # Unchanged: nothing to do.
    plan = make_plan([shard, manifest, card], remote, repo_id=REPO, revision="main")
    assert plan.commits == [] and len(plan.unchanged) == 3
    # Another package (different manifest, a file the folder lacks): conflicts.
    other = [_lf("data/b.parquet", b"b"), _lf("manifest.json", b"{1}"), card]
    plan = make_plan(other, remote, repo_id=REPO, revision="main")
    assert set(plan.conflicts) == {"data/a.parquet", "manifest.json"} and plan.delete == []
    assert plan.remote == "other content"
    plan = make_plan(other, remote, repo_id=REPO, revision="main", overwrite=True)
    assert plan.delete == ["data/a.parquet"]
    assert [f.path for f in plan.commits[-1]] == ["manifest.json"]  # with the deletion
    plan = make_plan(other, remote, repo_id=REPO, revision="v2", new_branch=True)
    assert plan.delete == ["data/a.parquet"] and plan.remote == "new branch"


# --------------------------------------------------------------------------- the card
def test_card_holds_tables_definitions_samples_and_citations(package: Path):
    from synthesis.levels import ATTACK_EPSILONS_GREY, SIB_SIGMA_PX, SNR_LEVELS

    manifest = json.loads((package / "manifest.json").read_text())
    text = (package / "README.md").read_text()
    assert text == render_card(manifest, out=package)
    meta = card_metadata(manifest)
    assert meta["task_categories"] == ["image-segmentation"] and meta["license"] == "cc-by-4.0"
    assert {c["config_name"] for c in meta["configs"]} == set(CONFIGS)
    assert "SNR = S / sqrt(S + B + σ_r²)" in text
    for lv, sigma in SIB_SIGMA_PX.items():
        assert f"| `sib` | {lv} | Gaussian PSF σ = {sigma:g} px" in text
    assert ", ".join(str(s) for s in SNR_LEVELS) in text
    assert "ε = " + ", ".join(str(e) for e in ATTACK_EPSILONS_GREY) in text
    for c in CONFIGS:  # splits table: the count of every split of every config
        for split, info in manifest["configs"][c]["splits"].items():
            assert f"| `{split}` |" in text and str(info["num_rows"]) in text
        assert f"![{c} samples](images/{c}_samples.png)" in text
    for key in ("zhong2024robustness", "zhong2023fluorobenchdata", "caicedo2019nucleus"):
        assert f"{{{key}," in text
    assert "ljosa2012bbbc" in text and "@software{fluorobench_c" in text
    assert "CC0 1.0" in text and "CC BY 4.0" in text and "10.21227/t2he-zn97" in text
    assert "No evaluation results are included" in text and "No reference model" in text
    assert "{{" not in text.replace("{{ER and", "")  # every placeholder filled


def test_card_renders_evaluation_results_when_present(package: Path, tmp_path: Path):
    out = tmp_path / "pkg"
    shutil.copytree(package, out)
    results = {
        "config": "mito",
        "model": {"description": "reference U-Net", "sha256": "ab" * 32},
        "splits": {
            "test": {"images": 2, "iou": 0.81234, "dice": 0.9, "robustness": 100.0},
            "snr_2": {"images": 2, "iou": 0.40617, "dice": 0.58, "robustness": 50.0},
        },
        "families": {"snr": {"mean_robustness": 50.0, "splits": 1}},
    }
    (out / "results").mkdir()
    (out / "results" / "mito.json").write_text(json.dumps(results))
    manifest = json.loads((out / "manifest.json").read_text())
    text = render_card(manifest, repo=REPO, out=out)
    assert "| `test` | 2 | 0.812 | 0.900 | 100.0 |" in text
    assert "| `snr_2` | 2 | 0.406 | 0.580 | 50.0 |" in text
    assert "| snr | 50.0 |" in text and "results/mito.json" in text
    assert "No evaluation results" not in text
    assert "**Beyond IoU.**" in text and "clDice" in text  # what each metric catches

    # with the structure metrics (every build's results have them): columns beside IoU
    results["metrics"] = {
        "reported": ["cldice", "beta0_error", "hd95", "nsd"],
        "headline": "cldice",
    }
    results["splits"]["test"].update(cldice=0.75, beta0_error=1.5, hd95=3.25, nsd=0.9)
    results["splits"]["snr_2"].update(cldice=0.375, beta0_error=4.0, hd95=12.5, nsd=0.45)
    results["families"]["snr"]["metrics"] = {
        "cldice": {"mean_robustness": 50.0},
        "nsd": {"mean_robustness": 50.0},
    }
    (out / "results" / "mito.json").write_text(json.dumps(results))
    text = render_card(manifest, repo=REPO, out=out)
    assert (
        "| split | images | IoU | Dice | robustness | clDice | β0 error | HD95 (px) | NSD |" in text
    )
    assert "| `snr_2` | 2 | 0.406 | 0.580 | 50.0 | 0.375 | 4.000 | 12.50 | 0.450 |" in text
    assert "| family | mean robustness | clDice robustness | NSD robustness |" in text
    assert "| snr | 50.0 | 50.0 | 50.0 |" in text


def test_sample_grid_shows_one_id_across_splits(package: Path):
    from builder.package.samples import _CAPTION_PX, _GAP_PX, _TITLE_PX, TILE_SIZES, _tile

    manifest = json.loads((package / "manifest.json").read_text())
    for config in CONFIGS:
        png = (package / "images" / f"{config}_samples.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) <= MAX_PNG_BYTES
        grid = np.asarray(Image.open(io.BytesIO(png)))
        splits = manifest["configs"][config]["splits"]
        rows = [[n for n in r if n in splits or n == "mask"] for r in grid_rows()]
        rows = [r for r in rows if r]
        size = next(
            t
            for t in TILE_SIZES
            if grid.shape[0] == _TITLE_PX + len(rows) * (t + _CAPTION_PX + _GAP_PX) + _GAP_PX
        )
        # The first tile is the mask of the first test id, the second its clean image.
        test = pq.read_table(package / split_files(manifest, config, "test")[0]).to_pylist()[0]
        mask = np.asarray(Image.open(io.BytesIO(test["mask"]["bytes"]))).astype(np.float32)
        y, x = _TITLE_PX, _GAP_PX
        assert np.array_equal(grid[y : y + size, x : x + size], _tile(mask, size, scale=False))
        clean = pq.read_table(package / split_files(manifest, config, "clean")[0]).to_pylist()[0]
        assert clean["id"] == test["id"]


def test_sample_grid_of_a_full_build_stays_small(package: Path):
    """Worst case: every tile of the full layout (7 rows) is a noisy SNR-2 image."""
    from builder.package.samples import _CAPTION_PX, _GAP_PX, _TITLE_PX, TILE_SIZES, render_grid

    manifest = json.loads((package / "manifest.json").read_text())
    for config in CONFIGS:
        splits = manifest["configs"][config]["splits"]
        for name in (n for row in grid_rows()[1:] for n in row):
            splits[name] = splits["snr_2"]
        png = render_grid(package, manifest, config)
        assert png is not None and len(png) <= MAX_PNG_BYTES, (config, len(png or b""))
        height = Image.open(io.BytesIO(png)).size[1]
        rows = len(grid_rows())  # mask/clean, SNR, SIB, SVB, FGSM, I-FGSM, PGD
        assert any(
            height == _TITLE_PX + rows * (t + _CAPTION_PX + _GAP_PX) + _GAP_PX for t in TILE_SIZES
        )


def test_models_repo_round_trip_from_pretrained_and_eval_results(
    package: Path, hub: LoopbackHub, tmp_path: Path
):
    """``publish --models-repo``: each U-Net becomes a model repo that ``UNet.from_pretrained``
    and ``evaluate --model ORG/NAME-mito`` load, with a model card and ``.eval_results/``."""
    import torch
    import yaml
    from huggingface_hub import ModelCard, parse_eval_result_entries

    from synthesis.models.unet import UNet, save_model

    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    weights = pkg / "models" / "mito-unet.safetensors"
    save_model(UNet(base_channels=4, depth=2, seed=1), weights, metadata={"note": "test"})
    local = [
        *("evaluate", "--data", str(pkg), "--config", "mito", "--model", str(weights)),
        *("--splits", "test", "snr_2", "--device", "cpu"),
    ]
    assert main([*local, "--out", str(tmp_path / "local")]) == 0
    assert not (tmp_path / "local" / ".eval_results").exists()  # no benchmark id: none
    expected = json.loads((tmp_path / "local" / "results.json").read_text())
    (pkg / "results").mkdir(exist_ok=True)
    shutil.copy(tmp_path / "local" / "results.json", pkg / "results" / "mito.json")

    models = "fluorobench/unet"
    args = ["publish", str(pkg), "--repo-id", REPO, "--no-load", "--models-repo", models]
    r = _run(hub, tmp_path / "home", args, full_cli=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'UNet.from_pretrained("{models}-mito")' in r.stdout
    remote = hub.state.files(f"{models}-mito", repo_type="model")
    assert remote["model.safetensors"] == weights.read_bytes()  # the attacked model, as is
    assert json.loads(remote["config.json"]) == {
        "base_channels": 4,
        "depth": 2,
        "in_channels": 1,
        "out_channels": 1,
    }
    card = ModelCard(remote["README.md"].decode())
    assert card.data.library_name == "fluorobench-c" and card.data.datasets == [REPO]
    assert card.data.pipeline_tag == "image-segmentation" and "iou" in card.data.metrics
    entries = parse_eval_result_entries(
        yaml.safe_load(remote[".eval_results/fluorobench-c-mito.yaml"])
    )
    by_task = {e.task_id: e for e in entries}
    assert set(by_task) == {"mito-test", "mito-snr_2"} and all(
        e.dataset_id == REPO for e in entries
    )
    assert by_task["mito-snr_2"].value == round(100 * expected["splits"]["snr_2"]["iou"], 2)

    # evaluate --model with the Hub model id, in a fresh process talking to the hub only
    out = tmp_path / "hub-eval"
    r = _run(
        hub,
        tmp_path / "reader",
        [*local[:6], f"{models}-mito", *local[7:], "--out", str(out), "--benchmark-id", REPO],
        token=None,
        full_cli=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    assert got["model"]["sha256"] == expected["model"]["sha256"]
    for split in ("test", "snr_2"):
        assert got["splits"][split]["iou"] == expected["splits"][split]["iou"]
    written = yaml.safe_load((out / ".eval_results" / "fluorobench-c-mito.yaml").read_text())
    assert written == yaml.safe_load(remote[".eval_results/fluorobench-c-mito.yaml"])

    # a local folder in the same layout loads with from_pretrained too
    from builder.package.model_repos import write_model_folder

    folder = write_model_folder(
        pkg,
        json.loads((pkg / "manifest.json").read_text()),
        "mito",
        tmp_path / "m",
        dataset_repo=REPO,
    )
    net = UNet.from_pretrained(folder, strict=True)
    ref = UNet(base_channels=4, depth=2, seed=1).eval()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net(x), ref(x))


def test_benchmark_declaration_lists_every_scored_split(package: Path):
    import yaml

    from builder.package.eval_results import benchmark_declaration
    from builder.package.verify import verify

    manifest = json.loads((package / "manifest.json").read_text())
    declared = yaml.safe_load((package / "eval.yaml").read_text())
    assert declared == benchmark_declaration(manifest)
    assert {"name", "description", "evaluation_framework", "tasks"} <= set(declared)
    tasks = {(t["config"], t["split"]) for t in declared["tasks"]}
    for config, entry in manifest["configs"].items():
        for split in entry["splits"]:
            assert ((config, split) in tasks) == (split not in ("train", "validation"))
    assert all(t["id"] == f"{t['config']}-{t['split']}" for t in declared["tasks"])
    bad = package.parent / "bad-declaration"
    shutil.copytree(package, bad)
    (bad / "eval.yaml").write_text(yaml.safe_dump({**declared, "tasks": declared["tasks"][:1]}))
    assert any("eval.yaml" in str(p) for p in verify(bad, load=False))


def test_card_yaml_is_complete_and_licences_follow_the_source(package: Path):
    from builder.package.card import licence_of

    manifest = json.loads((package / "manifest.json").read_text())
    meta = card_metadata(manifest)
    assert meta["task_categories"] == ["image-segmentation"]
    assert meta["task_ids"] == ["semantic-segmentation", "instance-segmentation"]
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["source_datasets"] == ["original"] and meta["license"] == "cc-by-4.0"
    defaults = [c["config_name"] for c in meta["configs"] if c.get("default")]
    assert defaults == ["mito"]
    assert licence_of(["bbbc038"]) == {"license": "cc0-1.0"}
    luo = licence_of(["luo"])
    assert luo["license"] == "other" and luo["license_name"] and luo["license_link"]
    assert licence_of(["procedural", "bbbc038"])["license"] == "other"
    card = (package / "README.md").read_text()
    assert 'pip install "fluorobench-c @ git+https://' in card
    for section in ("## Intended use", "## Out-of-scope use", "## Limitations", "## How to cite"):
        assert section in card


# --------------------------------------------------------------------------- model repos
MODELS = "fluorobench/unet"
#: A Hub (or proxy) that echoes the request's token in its error message.
ECHO = "no write access for token {token}"


@pytest.fixture(scope="module")
def unet_package(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package with a small reference U-Net for ``mito``: what ``--models-repo`` uploads."""
    from synthesis.models.unet import UNet, save_model

    pkg = tmp_path_factory.mktemp("models") / "pkg"
    shutil.copytree(package, pkg)
    save_model(
        UNet(base_channels=4, depth=2, seed=1),
        pkg / "models" / "mito-unet.safetensors",
        metadata={},
    )
    return pkg


def _log_ours_and_the_clients(caplog: pytest.LogCaptureFixture) -> None:
    """Capture every record of this project and of ``huggingface_hub``, and INFO and up of
    the rest (``httpcore`` logs raw response headers at DEBUG: an echoing server's words)."""
    caplog.set_level(logging.INFO)
    for name in ("builder", "synthesis", "huggingface_hub"):
        caplog.set_level(logging.DEBUG, logger=name)


@pytest.mark.parametrize(
    "route, status, error, says",
    [
        ("create", 403, PublishRefused, "refused access while creating the model repo"),
        ("create", 500, PublishError, "the Hub failed while creating the model repo"),
        ("commit", 500, PublishError, "the Hub failed while uploading the model repo"),
        ("preupload", 403, PublishRefused, "refused access while uploading the model repo"),
    ],
)
def test_models_repo_failures_are_typed_and_scrubbed(
    unet_package: Path, hub: LoopbackHub, route, status, error, says, caplog, monkeypatch
):
    """``publish_models`` talks to the Hub through the dataset's transport: typed errors
    naming the repo, the token in neither the message nor the logs."""
    from builder.package.model_repos import publish_models

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)  # plain LFS
    _log_ours_and_the_clients(caplog)
    hub.state.add_fault(route, status=status, message=ECHO)
    with pytest.raises(error) as err:
        publish_models(unet_package, MODELS, dataset_repo=REPO, token=TOKEN, endpoint=hub.endpoint)
    assert type(err.value) is error  # a 500 is not a refusal
    message = str(err.value)
    assert says in message and f"{MODELS}-mito" in message and hub.endpoint in message
    assert len(message.splitlines()) == 1
    assert TOKEN not in message and TOKEN not in caplog.text


def test_models_repo_unreachable_hub_is_a_publish_error(unet_package: Path, caplog):
    from builder.package.model_repos import publish_models

    _log_ours_and_the_clients(caplog)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(PublishError, match=f"cannot reach the Hub at {dead} while creating") as err:
        publish_models(unet_package, MODELS, dataset_repo=REPO, token=TOKEN, endpoint=dead)
    assert not isinstance(err.value, PublishRefused)
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text


def test_models_repo_failures_exit_like_the_dataset_path(
    unet_package: Path, hub: LoopbackHub, tmp_path: Path
):
    """``publish --models-repo``: the model repo refused (403): exit 2; the Hub failing its
    commit (500): exit 1; one line each, never the token (checked by ``_run``) though the
    hub echoes it."""
    args = ["publish", str(unet_package), "--repo-id", REPO, "--no-load", "--models-repo", MODELS]
    hub.state.add_fault("create", after=1, status=403, message=ECHO)  # the dataset's passes
    r = _run(hub, tmp_path / "home", args)
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("fluorobench-c: error: the Hub at") and "(HTTP 403)" in err
    assert f"refused access while creating the model repo {MODELS}-mito" in err
    assert "Traceback" not in r.stderr
    assert f"published {hub.endpoint}/datasets/{REPO}" in r.stdout  # the dataset went up

    hub.state.add_fault("commit", status=500, message=ECHO)  # the dataset is up to date
    r = _run(hub, tmp_path / "home", args)
    assert r.returncode == 1, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    assert f"the Hub failed while uploading the model repo {MODELS}-mito" in err
    assert "Traceback" not in r.stderr and "up to date" in r.stdout

    r = _run(hub, tmp_path / "home", args)  # the same command again completes
    assert r.returncode == 0, r.stderr[-3000:]
    weights = (unet_package / "models" / "mito-unet.safetensors").read_bytes()
    assert hub.state.files(f"{MODELS}-mito", repo_type="model")["model.safetensors"] == weights


def test_model_header_has_one_reader_without_torch(unet_package: Path, tmp_path: Path):
    """The U-Net record is read by one function, torch-free (``builder.package`` uses it);
    a file without it, or not a safetensors file, is one error naming the file."""
    from safetensors.numpy import save_file

    from builder.package.model_repos import model_repo_files
    from synthesis.models.unet import load_model
    from synthesis.models.weights import WeightsFileError

    weights = unet_package / "models" / "mito-unet.safetensors"
    code = (
        "import sys; from pathlib import Path; "
        "from builder.package.model_repos import read_model_record; "
        f"r = read_model_record(Path({str(weights)!r})); "
        "assert r['architecture']['class'] == 'UNet', r; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

    pkg = tmp_path / "pkg"
    shutil.copytree(unet_package, pkg)
    manifest = json.loads((pkg / "manifest.json").read_text())
    bad = pkg / "models" / "mito-unet.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(bad), metadata={"other": "{}"})
    for junk in (None, b"not a safetensors file at all"):
        if junk is not None:
            bad.write_bytes(junk)
        for read in (
            lambda: load_model(bad),
            lambda: model_repo_files(pkg, manifest, "mito", dataset_repo=REPO, models_repo=MODELS),
        ):
            with pytest.raises(WeightsFileError, match=re.escape(str(bad))):
                read()
    assert issubclass(WeightsFileError, ValueError) and WeightsFileError("x").exit_code == 2
