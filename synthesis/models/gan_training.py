"""Training of the pix2pix models: the mask-to-image generator and the denoiser.

One trainer (:class:`Pix2PixTrainer`) serves both: a :class:`synthesis.models.pix2pix.UNetGenerator`
maps an input (mask + noise channels, or a noisy image) to a target image, a
:class:`synthesis.models.pix2pix.PatchDiscriminator` judges ``(condition, image)`` pairs, and the
losses are the pix2pix ones: vanilla GAN (BCE with logits) + ``l1_weight`` x L1, Adam
(lr 2e-4, beta1 0.5); the discriminator's loss is halved, as in the reference. With
``gan_weight = 0`` the discriminator is not built and training is plain L1 regression.

Determinism: every random draw of step ``s`` (which pairs, crops, flips, dropout masks and
the generator's noise input) comes from seeds derived from ``(seed, name, s)``, never from the
global RNG or from the state of a long-lived generator. A checkpoint (weights, batch-norm
statistics, both optimisers' states and the step) therefore determines the rest of a run: on
CPU a resumed run continues bit for bit (``tests/test_pix2pix.py``). On CUDA, ``amp`` runs the
forward passes under bfloat16 autocast (no loss scaling needed); cuDNN may make runs differ in
the last bits.

Files written under the output folder by :func:`fit`:

* ``checkpoints/<name>-step-XXXXXXXX.safetensors`` every ``checkpoint_every`` steps (the two
  newest are kept; writes are atomic), and at the end;
* ``<name>-loss.jsonl``: one line per ``log_every`` steps with the losses and the training
  seconds so far, over resumed runs (truncated to the checkpoint's step on resume, so a log
  never repeats a step);
* ``samples/<name>-step-XXXXXXXX.png``: a grid of fixed examples, one per row:
  condition | target | output;
* the final weights, written by the caller with :func:`synthesis.models.pix2pix.save_weights`.

Streams: :data:`streams.GAN_TRAIN_NOISE` (the generator's noise input during training).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthesis import rng
from synthesis.models.pix2pix import PatchDiscriminator, UNetGenerator, atomic_save
from synthesis.rng import derive_seed, streams

__all__ = [
    "DENOISER_PRESETS",
    "PRESETS",
    "GanSettings",
    "PairSet",
    "Pix2PixTrainer",
    "fit",
    "latest_checkpoint",
    "save_grid",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GanSettings:
    """Hyper-parameters of one pix2pix training run (stored with checkpoints and weights)."""

    steps: int = 20000
    batch_size: int = 1
    crop: int = 256
    ngf: int = 64
    ndf: int = 64
    num_downs: int = 8
    n_layers_d: int = 3
    noise_channels: int = 1
    dropout: float = 0.5
    lr: float = 2e-4
    beta1: float = 0.5
    l1_weight: float = 100.0
    gan_weight: float = 1.0
    checkpoint_every: int = 1000
    sample_every: int = 1000
    log_every: int = 10
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop", "ngf", "ndf", "num_downs", "n_layers_d"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1. Got {v!r}")
        for name in ("checkpoint_every", "sample_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1. Got {v!r}")
        if self.noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0. Got {self.noise_channels}")
        if self.lr <= 0 or not 0 <= self.beta1 < 1:
            raise ValueError(f"lr must be > 0 and beta1 in [0, 1). Got {self.lr}, {self.beta1}")
        if self.l1_weight < 0 or self.gan_weight < 0 or self.l1_weight + self.gan_weight == 0:
            raise ValueError(
                f"l1_weight and gan_weight must be >= 0, not both 0. Got {self.l1_weight}, "
                f"{self.gan_weight}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0. Got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Named settings. ``reference``: the authors' pix2pix (U-Net-256, ngf 64, 256 crops,
#: batch 1) for a GPU. ``cpu``: what trains in minutes on a 2-core CPU (ngf 16, 7 levels,
#: 128 crops, batch 4). ``tiny``: for tests.
PRESETS: dict[str, GanSettings] = {
    "reference": GanSettings(),
    "cpu": GanSettings(
        steps=1500,
        batch_size=4,
        crop=128,
        ngf=16,
        ndf=32,
        num_downs=7,
        checkpoint_every=250,
        sample_every=250,
    ),
    "tiny": GanSettings(
        steps=8,
        batch_size=2,
        crop=32,
        ngf=4,
        ndf=4,
        num_downs=4,
        n_layers_d=2,
        checkpoint_every=4,
        sample_every=4,
        log_every=1,
    ),
}

#: Denoiser settings derived from a generator preset: no noise input, no dropout (a denoiser
#: should be deterministic). ``reference`` keeps the authors' pix2pix losses (GAN + 100 L1);
#: ``cpu`` trains with L1 only at a higher rate, which converged in a few hundred steps where
#: the GAN term at 2e-4 had not (``benchmarks/RESULTS.md``).
DENOISER_OVERRIDES: dict[str, Any] = {"noise_channels": 0, "dropout": 0.0}
DENOISER_PRESETS: dict[str, dict[str, Any]] = {
    "reference": {**DENOISER_OVERRIDES, "steps": 5000},
    "cpu": {**DENOISER_OVERRIDES, "steps": 400, "gan_weight": 0.0, "lr": 1e-3},
    "tiny": {**DENOISER_OVERRIDES, "steps": 8},
}


class PairSet:
    """Real (mask, image) pairs of any sizes, sampled as random crops with random flips.

    Args:
        masks: 2-D bool tensors ``(H_i, W_i)``.
        images: 2-D float tensors of the same sizes, normalised to ``[0, 1]``.
        labels: optional 2-D int instance labels of the same sizes.

    Raises:
        ValueError: empty lists, lengths or sizes that differ.
    """

    def __init__(
        self,
        masks: Sequence[Tensor],
        images: Sequence[Tensor],
        labels: Sequence[Tensor] | None = None,
    ) -> None:
        if not masks or len(masks) != len(images):
            raise ValueError(
                f"masks and images must be non-empty lists of equal length. Got {len(masks)} "
                f"and {len(images)}"
            )
        if labels is not None and len(labels) != len(masks):
            raise ValueError(f"labels must have {len(masks)} entries. Got {len(labels)}")
        for i, (m, x) in enumerate(zip(masks, images, strict=True)):
            if m.dim() != 2 or tuple(m.shape) != tuple(x.shape):
                raise ValueError(
                    f"pair {i}: mask and image must be 2-D of one size. Got {tuple(m.shape)} "
                    f"and {tuple(x.shape)}"
                )
        self.masks = [m != 0 for m in masks]
        self.images = [x.float() for x in images]
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def min_size(self) -> int:
        return min(min(m.shape) for m in self.masks)

    def sample(
        self, gen: torch.Generator, batch: int, crop: int
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``batch`` random crops with random horizontal/vertical flips, from ``gen``.

        Returns:
            ``(mask (B,1,c,c) bool, image (B,1,c,c) float32, labels (B,1,c,c) int64 or None)``.

        Raises:
            ValueError: ``crop`` larger than the smallest pair.
        """
        if crop > self.min_size:
            raise ValueError(
                f"crop must be <= the smallest image side ({self.min_size}). Got {crop}"
            )
        ms, xs, ls = [], [], []
        # A loop over the few samples of a batch (not over pixels): each has its own size.
        for _ in range(batch):
            i = int(torch.randint(len(self), (1,), generator=gen))
            h, w = self.masks[i].shape
            top = int(torch.randint(h - crop + 1, (1,), generator=gen))
            left = int(torch.randint(w - crop + 1, (1,), generator=gen))
            flips = torch.rand(2, generator=gen) < 0.5
            dims = [d for d, f in zip((0, 1), flips.tolist(), strict=True) if f]
            sl = (slice(top, top + crop), slice(left, left + crop))
            m, x = self.masks[i][sl], self.images[i][sl]
            lab = self.labels[i][sl].long() if self.labels is not None else None
            if dims:
                m, x = m.flip(dims), x.flip(dims)
                lab = lab.flip(dims) if lab is not None else None
            ms.append(m)
            xs.append(x)
            ls.append(lab)
        labels = torch.stack(ls)[:, None] if self.labels is not None else None
        return torch.stack(ms)[:, None], torch.stack(xs)[:, None], labels


def _step_generator(
    seed: int, name: str, step: int, purpose: str, device: torch.device
) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, name, purpose, step))


def _row_seeds(seed: int, name: str, step: int, batch: int, device: torch.device) -> Tensor:
    vals = [derive_seed(seed, name, "noise", step, i) for i in range(batch)]
    return torch.tensor(vals, dtype=torch.int64, device=device)


class Pix2PixTrainer:
    """Generator + discriminator + optimisers + step counter of one pix2pix run.

    Args:
        settings: the :class:`GanSettings`.
        name: names the run's files and salts its seeds (e.g. ``"nucleus-pix2pix"``).
        in_channels: generator input channels (condition + noise channels).
        device: where to train.
    """

    def __init__(
        self,
        settings: GanSettings,
        name: str,
        in_channels: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.settings = settings
        self.name = name
        self.device = torch.device(device)
        s = settings
        self.G = UNetGenerator(
            in_channels,
            1,
            s.ngf,
            s.num_downs,
            dropout=s.dropout,
            noise_channels=min(s.noise_channels, in_channels - 1),
            seed=derive_seed(s.seed, name, "init-G") >> 1,
        ).to(self.device)
        self.optG = torch.optim.Adam(self.G.parameters(), lr=s.lr, betas=(s.beta1, 0.999))
        self.D: PatchDiscriminator | None = None
        self.optD: torch.optim.Optimizer | None = None
        if s.gan_weight > 0:
            self.D = PatchDiscriminator(
                1 + 1, s.ndf, s.n_layers_d, seed=derive_seed(s.seed, name, "init-D") >> 1
            ).to(self.device)
            self.optD = torch.optim.Adam(self.D.parameters(), lr=s.lr, betas=(s.beta1, 0.999))
        self.step = 0
        #: Wall-clock seconds spent in training steps, over all resumed runs.
        self.seconds = 0.0

    # ----------------------------------------------------------------- training
    def _autocast(self) -> Any:
        enabled = self.settings.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, inputs: Tensor, targets: Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the losses; advances :attr:`step`.

        Args:
            inputs: ``(B, in_channels, H, W)`` in ``[-1, 1]`` (condition first).
            targets: ``(B, 1, H, W)`` in ``[-1, 1]``.
        """
        s = self.settings
        self.G.train()
        drop = _step_generator(s.seed, self.name, self.step, "dropout", self.device)
        cond = inputs[:, :1]
        with self._autocast():
            fake = self.G(inputs, dropout_generator=drop)
        losses: dict[str, float] = {}
        if self.D is not None:
            self.D.train()
            self.D.requires_grad_(True)
            with self._autocast():
                pred_fake = self.D(torch.cat([cond, fake.detach()], 1)).float()
                pred_real = self.D(torch.cat([cond, targets], 1)).float()
            loss_d = 0.5 * (
                F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake))
                + F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real))
            )
            self.optD.zero_grad(set_to_none=True)
            loss_d.backward()
            self.optD.step()
            self.D.requires_grad_(False)
            losses["loss_D"] = loss_d.detach().item()
        loss_l1 = F.l1_loss(fake.float(), targets)
        loss_g = s.l1_weight * loss_l1
        if self.D is not None:
            with self._autocast():
                pred = self.D(torch.cat([cond, fake], 1)).float()
            loss_gan = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
            loss_g = loss_g + s.gan_weight * loss_gan
            losses["loss_G_gan"] = loss_gan.detach().item()
        if not bool(torch.isfinite(loss_g)):
            raise FloatingPointError(
                f"{self.name}: non-finite generator loss at step {self.step}. Got {float(loss_g)}"
            )
        self.optG.zero_grad(set_to_none=True)
        loss_g.backward()
        self.optG.step()
        losses["loss_G_l1"] = loss_l1.detach().item()
        self.step += 1
        return losses

    @torch.no_grad()
    def predict(self, inputs: Tensor) -> Tensor:
        """Generator output in ``[-1, 1]`` in eval mode (no dropout)."""
        self.G.eval()
        with self._autocast():
            return self.G(inputs).float()

    # ----------------------------------------------------------------- checkpoints
    def _modules(self) -> dict[str, Any]:
        mods: dict[str, Any] = {"G": self.G, "optG": self.optG}
        if self.D is not None:
            mods.update(D=self.D, optD=self.optD)
        return mods

    def save_checkpoint(self, path: str | Path) -> str:
        """Write weights, batch-norm statistics, optimiser states and step; return sha256."""
        tensors: dict[str, Tensor] = {}
        groups: dict[str, Any] = {}
        for key, mod in self._modules().items():
            if isinstance(mod, torch.optim.Optimizer):
                sd = mod.state_dict()
                groups[key] = sd["param_groups"]
                for idx, st in sd["state"].items():
                    for k, v in st.items():
                        tensors[f"{key}.state.{idx}.{k}"] = (
                            torch.as_tensor(v).detach().cpu().contiguous()
                        )
            else:
                for k, v in mod.state_dict().items():
                    tensors[f"{key}.{k}"] = v.detach().cpu().contiguous()
        # One header key: several would be written in a varying order (see pix2pix).
        header = {
            "fluorobench.checkpoint": json.dumps(
                {
                    "name": self.name,
                    "step": self.step,
                    "seconds": round(self.seconds, 3),
                    "settings": self.settings.to_dict(),
                    "generator": self.G.hparams,
                    "param_groups": groups,
                },
                sort_keys=True,
            ),
        }
        return atomic_save(tensors, Path(path), header)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (same settings).

        Raises:
            ValueError: a checkpoint of another run (name, settings or architecture differ).
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("fluorobench.checkpoint", "null"))
        if not header:
            raise ValueError(f"{path} is not a pix2pix checkpoint. Got no checkpoint header")
        mine = {k: v for k, v in self.settings.to_dict().items() if k not in _RESUMABLE}
        theirs = {k: v for k, v in header["settings"].items() if k not in _RESUMABLE}
        if header["name"] != self.name or mine != theirs or header["generator"] != self.G.hparams:
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(
                f"{path} belongs to another run (name {header['name']!r}, differing settings "
                f"{diff}). Got a checkpoint that does not match {self.name!r}"
            )
        tensors = load_file(str(path), device=str(self.device))
        for key, mod in self._modules().items():
            prefix = f"{key}."
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if isinstance(mod, torch.optim.Optimizer):
                state: dict[int, dict[str, Tensor]] = {}
                for k, v in part.items():
                    _, idx, name = k.split(".", 2)
                    state.setdefault(int(idx), {})[name] = v
                mod.load_state_dict({"state": state, "param_groups": header["param_groups"][key]})
            else:
                mod.load_state_dict(part, strict=True)
        self.step = int(header["step"])
        self.seconds = float(header.get("seconds", 0.0))


#: Settings that may change between a checkpoint and a resumed run.
_RESUMABLE = frozenset({"steps", "checkpoint_every", "sample_every", "log_every", "amp"})

_CKPT_RE = re.compile(r"^(?P<name>.+)-step-(?P<step>\d{8})\.safetensors$")


def latest_checkpoint(folder: str | Path, name: str) -> Path | None:
    """The newest ``checkpoints/<name>-step-XXXXXXXX.safetensors`` under ``folder``."""
    ckdir = Path(folder) / "checkpoints"
    found = []
    for p in ckdir.glob(f"{name}-step-*.safetensors"):
        m = _CKPT_RE.match(p.name)
        if m and m["name"] == name:
            found.append((int(m["step"]), p))
    return max(found)[1] if found else None


def _to_u8(x: Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def save_grid(rows: Sequence[Sequence[Tensor]], path: str | Path) -> None:
    """Write a PNG grid: one row per example, one column per ``(H, W)`` image in ``[0, 1]``.

    Each image is shown on its own min-max range except the first column (the condition),
    with a 2-pixel white gap between panels.
    """
    from PIL import Image

    gap = 2
    h, w = rows[0][0].shape[-2:]
    cols = len(rows[0])
    canvas = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            img = img.reshape(h, w).float()
            if c > 0:
                lo, hi = float(img.min()), float(img.max())
                img = (img - lo) / max(hi - lo, 1e-12)
            canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = _to_u8(
                img
            )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def _write_log(path: Path, entries: list[dict[str, Any]], upto: int | None = None) -> None:
    if upto is not None and path.exists():
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= upto
        ]
        path.write_text("".join(k + "\n" for k in kept))
    if entries:
        with path.open("a") as f:
            for e in entries:
                f.write(json.dumps(e, sort_keys=True) + "\n")


BatchFn = Callable[[int, torch.Generator, Tensor], tuple[Tensor, Tensor]]


def fit(
    trainer: Pix2PixTrainer,
    batch_fn: BatchFn,
    out_dir: str | Path,
    *,
    samples: tuple[Tensor, Tensor] | None = None,
    progress: Callable[[int], object] | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``trainer`` to ``settings.steps``, resuming from the newest checkpoint.

    Args:
        trainer: the run.
        batch_fn: ``batch_fn(step, gen, row_seeds) -> (inputs, targets)`` in ``[-1, 1]`` on
            the trainer's device; ``gen`` (a seeded generator on the CPU) and ``row_seeds``
            (``(B,)`` int64 for :mod:`synthesis.rng`) are derived from the run's seed and the
            step, so a step's batch is the same in an interrupted run.
        out_dir: the output folder (checkpoints, samples, loss log).
        samples: fixed ``(inputs, targets)`` shown in the sample grids.
        progress: called with the number of steps done after each step (a progress bar).
        resume: start from the newest checkpoint of this run if there is one.
        stop_after: stop once this many steps are done (for tests of interruption).

    Returns:
        The loss-log entries written by this call.
    """
    s = trainer.settings
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{trainer.name}-loss.jsonl"
    ckpt = latest_checkpoint(out, trainer.name) if resume else None
    if ckpt is not None:
        trainer.load_checkpoint(ckpt)
        logger.info("%s: resumed from %s (step %d)", trainer.name, ckpt, trainer.step)
    _write_log(log_path, [], upto=trainer.step if ckpt is not None else -1)
    if progress is not None and trainer.step:
        progress(trainer.step)
    written: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    last = min(s.steps, stop_after) if stop_after is not None else s.steps
    while trainer.step < last:
        t0 = time.perf_counter()
        step = trainer.step
        gen = _step_generator(s.seed, trainer.name, step, "batch", torch.device("cpu"))
        seeds = _row_seeds(s.seed, trainer.name, step, s.batch_size, trainer.device)
        inputs, targets = batch_fn(step, gen, seeds)
        losses = trainer.train_step(inputs, targets)
        trainer.seconds += time.perf_counter() - t0
        done = trainer.step
        if done % s.log_every == 0 or done == s.steps:
            entry = {"step": done, **{k: round(v, 6) for k, v in losses.items()}}
            entry["seconds"] = round(trainer.seconds, 3)
            pending.append(entry)
        if done % s.sample_every == 0 or done == s.steps:
            if samples is not None:
                _sample(trainer, samples, out / "samples" / f"{trainer.name}-step-{done:08d}.png")
        if done % s.checkpoint_every == 0 or done == s.steps:
            _write_log(log_path, pending)
            written += pending
            pending = []
            _checkpoint(trainer, out)
        if progress is not None:
            progress(1)
    _write_log(log_path, pending)
    return written + pending


def _checkpoint(trainer: Pix2PixTrainer, out: Path) -> None:
    path = out / "checkpoints" / f"{trainer.name}-step-{trainer.step:08d}.safetensors"
    trainer.save_checkpoint(path)
    olds = sorted((out / "checkpoints").glob(f"{trainer.name}-step-*.safetensors"))
    for p in olds[:-2]:
        p.unlink(missing_ok=True)
    logger.debug("checkpoint %s", path)


def _sample(trainer: Pix2PixTrainer, samples: tuple[Tensor, Tensor], path: Path) -> None:
    inputs, targets = samples
    pred = trainer.predict(inputs)
    rows = [
        [(inputs[i, 0] + 1) / 2, (targets[i, 0] + 1) / 2, (pred[i, 0] + 1) / 2]
        for i in range(inputs.shape[0])
    ]
    save_grid(rows, path)


def noise_input(seeds: Tensor, shape: tuple[int, int], channels: int) -> Tensor:
    """Training-time noise channels ``(B, channels, H, W)`` (stream :data:`streams.GAN_TRAIN_NOISE`)."""
    return rng.normal(seeds, (channels, *shape), streams.GAN_TRAIN_NOISE)


def with_overrides(settings: GanSettings, **overrides: Any) -> GanSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
