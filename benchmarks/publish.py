"""Publishing overhead: ``fluorobench-c publish`` against ``HfApi.upload_folder`` (baseline).

Both upload the same package to the loopback Hub of ``tests/hub_server.py`` (plain HTTP + LFS,
``HF_HUB_DISABLE_XET=1``), each into its own repo, in the same run:

- fresh upload: ``upload_folder`` (one commit, everything) vs ``publish --no-load`` (verify
  without loading, remote diff, chained commits of ``--files-per-commit`` files, post-check);
- re-run on the unchanged folder: both must send nothing; what does each cost?

The loopback server makes the network free, so the figures are the client-side overhead
(hashing, requests, verify). Timings exclude interpreter start-up: each client runs in a
subprocess (the hub libraries read ``HF_ENDPOINT`` at import) and times its own call.

    python benchmarks/publish.py [--package PATH] [--test 8] [--files-per-commit 20] [--json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
from _common import ROOT, emit

from tests.hub_server import LoopbackHub, hub_env

TOKEN = "hf_benchmark_token"

_BASELINE = """
import json, sys, time
from huggingface_hub import HfApi
api = HfApi()
t = time.perf_counter()
api.create_repo(sys.argv[2], repo_type="dataset", exist_ok=True)
api.upload_folder(folder_path=sys.argv[1], repo_id=sys.argv[2], repo_type="dataset",
                  ignore_patterns=[".*", "**/.*"], commit_message="upload_folder")
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

_PUBLISH = """
import json, sys, time
import huggingface_hub, builder.package.card, builder.package.verify  # imports are not what is measured
from builder.package.publish import publish
t = time.perf_counter()
r = publish(sys.argv[1], sys.argv[2], load_check=False, files_per_commit=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "commits": len(r.commits)}))
"""


def client(hub: LoopbackHub, home: Path, code: str, *args: str) -> dict:
    env = hub_env(hub.endpoint, home, TOKEN)
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--package", type=Path, default=None, help="an existing package folder")
    p.add_argument("--test", type=int, default=8, help="test images of the build (no --package)")
    p.add_argument("--files-per-commit", type=int, default=20)
    _common.add_json(p)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        out = args.package
        if out is None:
            from builder.cli import main as cli

            out = tmp_path / "pkg"
            build = ["build", str(out), "--config", "mito", "--splits", "reference", "snr"]
            build += ["sib", "--train", "4", "--validation", "2", "--test", str(args.test)]
            build += ["--shard-size", "4", "--device", "cpu"]  # many files, as a big build has
            assert cli(build) == 0
        files = [f for f in out.rglob("*") if f.is_file() and not f.name.startswith(".")]
        total = sum(f.stat().st_size for f in files)

        from builder.package.verify import verify

        t = time.perf_counter()
        assert verify(out, load=False) == []
        verify_s = time.perf_counter() - t

        hub = LoopbackHub({TOKEN: "bench"})
        try:
            home = tmp_path / "home"
            fpc = str(args.files_per_commit)
            base_1 = client(hub, home, _BASELINE, str(out), "bench/baseline")
            ours_1 = client(hub, home, _PUBLISH, str(out), "bench/publish", fpc)
            base_2 = client(hub, home, _BASELINE, str(out), "bench/baseline")
            puts = hub.state.count("lfs_put")
            ours_2 = client(hub, home, _PUBLISH, str(out), "bench/publish", fpc)
            assert hub.state.count("lfs_put") == puts, "the re-run uploaded something"
        finally:
            hub.stop()

    mb = total / 1e6
    result = {
        "machine": _common.machine(torch_version=False),
        "files": len(files),
        "megabytes": round(mb, 2),
        "verify_no_load_s": round(verify_s, 3),
        "fresh": {
            "upload_folder_s": round(base_1["seconds"], 3),
            "publish_s": round(ours_1["seconds"], 3),
            "publish_commits": ours_1["commits"],
            "ratio_publish_over_upload_folder": round(ours_1["seconds"] / base_1["seconds"], 2),
            "publish_mb_per_s": round(mb / ours_1["seconds"], 1),
        },
        "unchanged_rerun": {
            "upload_folder_s": round(base_2["seconds"], 3),
            "publish_s": round(ours_2["seconds"], 3),
            "ratio_publish_over_upload_folder": round(ours_2["seconds"] / base_2["seconds"], 2),
        },
    }
    emit(result, args.json, lambda r: report(r, mb, verify_s))


def report(result: dict, mb: float, verify_s: float) -> None:
    """The text report; ``mb`` and ``verify_s`` unrounded (``result`` holds them rounded)."""
    print(f"machine: {result['machine']}")
    print(f"package: {result['files']} files, {mb:.1f} MB; verify (no load) {verify_s:.2f} s")
    f, u = result["fresh"], result["unchanged_rerun"]
    print(
        f"fresh upload:    upload_folder {f['upload_folder_s']:.2f} s | publish "
        f"{f['publish_s']:.2f} s in {f['publish_commits']} commits | ratio "
        f"{f['ratio_publish_over_upload_folder']:.2f}x"
    )
    print(
        f"unchanged rerun: upload_folder {u['upload_folder_s']:.2f} s | publish "
        f"{u['publish_s']:.2f} s | ratio {u['ratio_publish_over_upload_folder']:.2f}x"
    )


if __name__ == "__main__":
    main()
