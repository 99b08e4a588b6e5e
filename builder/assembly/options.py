"""The arguments of a build: checked before anything is written, and the recipe that
decides whether an existing folder is resumed or refused."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import __version__
from builder.distributed import RENDEZVOUS_TIMEOUT_S
from builder.package.manifest import FORMAT_VERSION
from builder.package.plan import BASE_SPLITS, resolve_splits
from synthesis.corruptions.noise import NOISE_MODELS
from synthesis.groundtruth.masks import MITO_MASKS
from synthesis.levels import CONFIGS
from synthesis.runtime.device import resolve_device
from synthesis.runtime.errors import InputError
from synthesis.runtime.progress import ProgressFactory

#: Mask-to-image renderers: the physics model, pix2pix (+ denoiser), and the naive baseline.
RENDERERS = ("physics", "gan", "naive")


@dataclass
class BuildOptions:
    """Arguments of a build. Those in :meth:`recipe` determine the bytes written."""

    out: Path
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    source: str = "procedural"
    splits: list[str] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"train": 160, "validation": 20, "test": 40}
    )
    seed: int = 0
    device: str | None = None
    batch_size: int = 16
    overwrite: bool = False
    renderer: str = "physics"
    weights: str | None = None
    noise_model: str = "poisson_gaussian"
    shard_size: int = 256
    train_epochs: int | None = None
    #: The mito mask generator (procedural source): ``worms`` (default) or ``cells``.
    mito_masks: str = "worms"
    #: µm per pixel of an images-only source's images, by stem (``"*"``: all); empty: what
    #: the files state (docs/definitions.md#pixel-size-of-a-source).
    source_pixel_size: dict[str, float] = field(default_factory=dict)
    progress: ProgressFactory | None = None
    #: Seconds a rank of a multi-process launch waits to reach the rendezvous.
    rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_S

    def validate(self) -> None:
        """Raise InputError with one clear line for any bad argument; touches no file."""
        for c in self.configs:
            if c not in CONFIGS:
                raise InputError(f"unknown config {c!r}; expected one of {', '.join(CONFIGS)}")
        if not self.configs:
            raise InputError("no config selected; expected one or more of er, mito, nucleus")
        for split, n in self.counts.items():
            if split not in BASE_SPLITS:
                raise InputError(f"unknown base split {split!r}; expected {', '.join(BASE_SPLITS)}")
            if not isinstance(n, int) or n < 1:
                raise InputError(f"--{split} must be a whole number >= 1. Got {n!r}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1. Got {self.batch_size}")
        if self.shard_size < 1:
            raise InputError(f"--rows-per-shard must be >= 1. Got {self.shard_size}")
        if not self.rendezvous_timeout > 0:
            raise InputError(f"--rendezvous-timeout must be > 0. Got {self.rendezvous_timeout}")
        if self.seed < 0:
            raise InputError(f"--seed must be >= 0. Got {self.seed}")
        if self.renderer not in RENDERERS:
            raise InputError(f"unknown renderer {self.renderer!r}; expected {', '.join(RENDERERS)}")
        if self.renderer == "gan" and self.weights is None:
            raise InputError(
                "--renderer gan needs --weights DIR (made by 'fluorobench-c train-synthesizer'; "
                "no weights ship with the package). Got none"
            )
        if self.noise_model not in NOISE_MODELS:
            raise InputError(
                f"unknown noise model {self.noise_model!r}; expected {', '.join(NOISE_MODELS)}"
            )
        if self.mito_masks not in MITO_MASKS:
            raise InputError(
                f"unknown --mito-masks {self.mito_masks!r}; expected {', '.join(MITO_MASKS)}"
            )
        if self.mito_masks != "worms" and self.source != "procedural":
            raise InputError(
                f"--mito-masks {self.mito_masks} chooses a procedural mask generator; "
                f"--source {self.source} brings its own masks"
            )
        if self.mito_masks != "worms" and "mito" not in self.configs:
            raise InputError(
                f"--mito-masks {self.mito_masks} applies to the mito config, which this build "
                f"leaves out (--config {' '.join(self.configs)})"
            )
        if self.source_pixel_size:
            from synthesis.groundtruth.sources.pixel_size import check_pixel_size

            if self.source == "procedural":
                raise InputError(
                    "--source-pixel-size gives the pixel size of a source's images; "
                    "--source procedural has none"
                )
            for stem, um in self.source_pixel_size.items():
                check_pixel_size(um, repr(stem))
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"output path {self.out} exists and is not a folder")
        if self.source != "procedural" and not Path(self.source).exists():
            raise InputError(f"--source {self.source}: no such file or folder")
        resolve_device(self.device)  # a malformed name, or CUDA where there is none
        # Resolve split names now, so a typo fails before anything is written.
        resolve_splits(self.splits, with_real=self.source != "procedural")

    def recipe(self) -> dict[str, Any]:
        """What determines the bytes. ``mito_masks`` appears only when it is not the
        default ``worms``, and ``source_pixel_size`` only when given, so a default build's
        recipe (and manifest) is as before."""
        source = self.source if self.source == "procedural" else os.path.normpath(self.source)
        out = {
            "configs": sorted(self.configs, key=CONFIGS.index),
            "source": source,
            "splits": sorted(self.splits) if self.splits else None,
            "counts": dict(sorted(self.counts.items())),
            "seed": self.seed,
            "renderer": self.renderer,
            "weights": self.weights,
            "noise_model": self.noise_model,
            "shard_size": self.shard_size,
            "train_epochs": self.train_epochs,
            "package_version": __version__,
            "format_version": FORMAT_VERSION,
        }
        if self.mito_masks != "worms":
            out["mito_masks"] = self.mito_masks
        if self.source_pixel_size:  # likewise: only when given
            out["source_pixel_size"] = dict(sorted(self.source_pixel_size.items()))
        return out
