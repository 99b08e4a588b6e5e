"""``fluorobench-c publish``: upload a verified package to the Hugging Face Hub.

Exit codes: 0 done, 1 failed part-way (re-run the same command to resume), 2 refused
(nothing changed).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from builder.cli import common
from builder.package.publish import DEFAULT_FILES_PER_COMMIT
from synthesis.runtime.errors import InputError


def add_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description="Upload a verified package to the Hugging Face Hub. The token comes from "
        "HF_TOKEN or the logged-in user (hf auth login) and is never printed.",
    )
    p.add_argument("out", type=Path, help="the package folder (fluorobench-c build output)")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hub dataset repo")
    p.add_argument(
        "--models-repo",
        default=None,
        metavar="ORG/NAME",
        help="also upload each config's reference U-Net as the model repo ORG/NAME-<config> "
        "(loadable with UNet.from_pretrained; scores in .eval_results/)",
    )
    p.add_argument(
        "--bioimageio",
        action="store_true",
        help="with --models-repo: also put each U-Net's bioimage.io model package in its model "
        "repo's package/ folder (export-model --format bioimageio; needs the bioimageio extra)",
    )
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--commit-message", default=None, help="summary of the commits")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a repo that holds other content (files not in OUT are deleted)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would be uploaded and print the card; upload nothing",
    )
    p.add_argument(
        "--no-load", action="store_true", help="verify without loading every split (faster)"
    )
    p.add_argument(
        "--files-per-commit",
        type=common.counts,
        default=DEFAULT_FILES_PER_COMMIT,
        help="files per commit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ``publish`` sub-command: 0 done, 1 failed part-way (re-run), 2 refused."""
    from builder.package.publish import (
        check_repo_id,
        check_revision,
        megabytes,
        publish,
    )

    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # one line per request otherwise
        for name in ("httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    check_repo_id(args.repo_id)
    if args.models_repo is not None:
        check_repo_id(args.models_repo, "--models-repo")
    if args.revision is not None:
        check_revision(args.revision)
    if not args.out.is_dir():
        raise InputError(f"{args.out}: no such folder")
    if args.bioimageio:
        from builder.evaluation.bioimageio_export import bioimageio_missing

        if args.models_repo is None:
            raise InputError("--bioimageio goes with --models-repo (the model repos hold it)")
        if missing := bioimageio_missing():
            raise InputError(f"publish --bioimageio {missing}")
    # The bioimage.io packages are made before anything is uploaded, so that a package that
    # cannot be exported changes nothing remote; removed when the command ends.
    staging, extra = None, None
    if args.bioimageio and not args.dry_run:
        staging = tempfile.TemporaryDirectory(prefix="fluorobench-c-bioimageio-")
        extra = _bioimageio_packages(args.out, Path(staging.name))
    result = publish(
        args.out,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        commit_message=args.commit_message,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        load_check=not args.no_load,
        files_per_commit=args.files_per_commit,
    )
    plan = result.plan
    if result.dry_run:
        print("dry run: nothing is uploaded")
        if plan.note:
            print(plan.note)
        print(plan.summary())
        print("\n".join(plan.lines()))
        if plan.conflicts and not args.overwrite and plan.remote != "new branch":
            print(
                f"refused without --overwrite: {len(plan.conflicts)} remote file(s) differ "
                "from the folder or are not in it"
            )
        card = next(f for f in plan.new + plan.changed + plan.unchanged if f.path == "README.md")
        print("\n--- README.md (the dataset card) ---")
        print(card.read().decode())
        return 0
    if not result.commits:
        print(f"{result.url} is up to date (revision {result.revision}): nothing uploaded")
    else:
        print(
            f"published {result.url} (revision {result.revision}): "
            f"{len(plan.upload)} file(s), {megabytes(plan.upload_bytes)}, {len(plan.delete)} deleted, "
            f"{len(result.commits)} commit(s), last {result.commits[-1][:12]}"
        )
    if args.models_repo is not None:  # failures: PublishError / PublishRefused, as above
        from builder.package.model_repos import publish_models

        repos = publish_models(
            args.out,
            args.models_repo,
            dataset_repo=args.repo_id,
            private=args.private,
            extra=extra,
        )
        if staging is not None:
            staging.cleanup()
        for repo in repos:
            print(f'published model {repo}: UNet.from_pretrained("{repo}")')
            if args.bioimageio:
                print(f"  bioimage.io package: {repo}/package/bioimageio.yaml")
    config, split = _example(args.out)
    print(
        f'load with: datasets.load_dataset("{result.repo_id}", "{config}", split="{split}", '
        "streaming=True)"
    )
    return 0


def _bioimageio_packages(out: Path, tmp: Path) -> dict[str, dict[str, Path]]:
    """Per config with a reference U-Net: its bioimage.io package, exported into ``tmp``, as
    model-repo files."""
    from builder.evaluation.bioimageio_export import export_bioimageio
    from builder.package.manifest import read_manifest
    from builder.package.model_repos import bioimageio_repo_files, package_model

    extra = {}
    for config in (read_manifest(out) or {}).get("configs", {}):
        if package_model(out, config).is_file():
            folder = export_bioimageio(out, config, tmp / config)
            extra[config] = bioimageio_repo_files(folder)
    return extra


def _example(out: Path) -> tuple[str, str]:
    """A (config, split) of the package to show in the load example."""
    from builder.package.manifest import read_manifest

    configs = (read_manifest(out) or {}).get("configs") or {"mito": {"splits": {}}}
    config, entry = next(iter(configs.items()))
    splits = list(entry.get("splits", {})) or ["test"]
    return config, "snr_2" if "snr_2" in splits else splits[0]
