"""pix2pix (Isola et al., CVPR 2017) in plain torch: U-Net generator, PatchGAN discriminator.

The networks follow the authors' reference code (``junyanz/pytorch-CycleGAN-and-pix2pix``):

* :class:`UNetGenerator` is ``unet_256`` with ``num_downs = 8``: 4x4 stride-2 convolutions
  down (LeakyReLU 0.2, batch norm), 4x4 stride-2 transposed convolutions up (ReLU, batch
  norm), skips by concatenation, ``tanh`` output. Level ``i`` has ``ngf * min(2**i, 8)``
  channels; dropout 0.5 follows the up-convolutions of levels ``4 .. num_downs - 2`` (the
  ``ngf * 8`` levels next to the bottleneck). ``ngf`` and ``num_downs`` are free so that tests
  and CPU runs use tiny models; inputs of any size are reflect-padded to a multiple of
  ``2**num_downs`` and cropped back.
* :class:`PatchDiscriminator` is ``n_layers_D = 3``: a 70x70 receptive field per output
  logit, batch norm, LeakyReLU 0.2.

Two deliberate differences from the reference code, both for reproducibility:

* Dropout draws from an explicit ``torch.Generator`` passed to ``forward`` (required in
  training mode), never from the global RNG; in eval mode there is no dropout, so an image is
  a pure function of the mask, the noise channels and the weights.
* Variety comes from ``noise_channels`` extra input channels of standard normal noise drawn
  with :func:`synthesis.rng.normal` from each row's seed (stream :data:`streams.GAN_INPUT`):
  a row's input, hence its image, does not depend on the batch it is rendered in.
  (The reference relies on dropout at test time for variety.)

Intensity scale: training images are normalised so that the mean over the mask foreground is
:data:`FG_LEVEL` and clipped to [0, 1] (:func:`normalise_pair`); the generator maps that range
to ``[-1, 1]``. :func:`to_unit` maps an output back to [0, 1].

Weights are initialised like the reference (normal, std 0.02; batch-norm weights normal
around 1) from a seeded ``torch.Generator``; modules are built on the meta device first so the
global RNG is never drawn from. Saved files are ``.safetensors`` with the architecture and the
caller's metadata in the header (:func:`save_weights`, :func:`load_weights`).

Streams: :data:`streams.GAN_INPUT` (the generator's noise channels).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthesis import rng
from synthesis.checks import check_seeds
from synthesis.rng import streams

__all__ = [
    "FG_LEVEL",
    "PatchDiscriminator",
    "UNetGenerator",
    "generator_input",
    "init_pix2pix_weights",
    "load_weights",
    "normalise_pair",
    "save_weights",
    "to_unit",
]

from synthesis.models.weights import atomic_save, read_record

logger = logging.getLogger(__name__)

#: Mean foreground intensity of a normalised training image, in [0, 1]; 0.4 leaves room for
#: nuclei 2.5x brighter than the mean before clipping at 1.
FG_LEVEL: float = 0.4
#: Standard deviation of the reference initialisation (``init_type="normal"``, gain 0.02).
INIT_STD: float = 0.02
#: Dropout probability of the reference generator.
DROPOUT_P: float = 0.5

#: The one header key of a weights file. One key only: safetensors writes the header's
#: metadata from a hash map whose order varies between calls, so a file with several keys has
#: no reproducible sha256.
_HEADER_KEY = "fluorobench.pix2pix"


def _int_arg(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int. Got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Got {value}")
    return value


class _Dropout(nn.Module):
    """Inverted dropout whose mask comes from an explicit generator (never global RNG)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if generator is None:
            raise ValueError(
                "UNetGenerator in training mode needs dropout_generator= (a seeded "
                "torch.Generator on the input's device). Got None"
            )
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``(B, in_channels, H, W)`` in ``[-1, 1]`` -> ``(B, out_channels, H, W)``.

    Args:
        in_channels: input channels (for the mask-to-image model: 1 mask + ``noise_channels``).
        out_channels: output channels (1).
        ngf: channels of the first level (64 in the reference; small for CPU and tests).
        num_downs: stride-2 levels; 8 maps 256x256 to 1x1 at the bottleneck (``unet_256``).
        dropout: dropout probability of the levels next to the bottleneck (0 disables it).
        noise_channels: how many of the input channels are noise (metadata for the renderer:
            :func:`generator_input` builds them); must be < ``in_channels``.
        seed: seed of the weight initialisation (:func:`init_pix2pix_weights`).

    Raises:
        TypeError: a non-int size argument.
        ValueError: an argument out of range.

    Example:
        >>> g = UNetGenerator(in_channels=2, ngf=4, num_downs=3, noise_channels=1).eval()
        >>> g(torch.zeros(2, 2, 20, 24)).shape
        torch.Size([2, 1, 20, 24])
    """

    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        ngf: int = 64,
        num_downs: int = 8,
        *,
        dropout: float = DROPOUT_P,
        noise_channels: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = _int_arg(in_channels, "in_channels", 1)
        self.out_channels = _int_arg(out_channels, "out_channels", 1)
        self.ngf = _int_arg(ngf, "ngf", 1)
        self.num_downs = _int_arg(num_downs, "num_downs", 2)
        self.noise_channels = _int_arg(noise_channels, "noise_channels", 0)
        if self.noise_channels >= in_channels:
            raise ValueError(
                f"noise_channels must be < in_channels ({in_channels}): the first channel is "
                f"the condition. Got {noise_channels}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Got {dropout}")
        self.dropout = float(dropout)
        n = num_downs
        widths = [ngf * min(2**i, 8) for i in range(n)]
        with torch.device("meta"):
            downs = []
            for i in range(n):
                cin = in_channels if i == 0 else widths[i - 1]
                conv = nn.Conv2d(cin, widths[i], 4, stride=2, padding=1, bias=False)
                if i == 0:
                    downs.append(nn.Sequential(conv))
                elif i == n - 1:  # no norm at the 1x1 bottleneck, as in the reference
                    downs.append(nn.Sequential(nn.LeakyReLU(0.2), conv))
                else:
                    downs.append(nn.Sequential(nn.LeakyReLU(0.2), conv, nn.BatchNorm2d(widths[i])))
            ups = []
            for i in range(n):
                if i == 0:
                    cin = 2 * widths[0] if n > 1 else widths[0]
                    ups.append(
                        nn.Sequential(
                            nn.ReLU(),
                            nn.ConvTranspose2d(cin, out_channels, 4, stride=2, padding=1),
                            nn.Tanh(),
                        )
                    )
                else:
                    cin = widths[i] if i == n - 1 else 2 * widths[i]
                    ups.append(
                        nn.Sequential(
                            nn.ReLU(),
                            nn.ConvTranspose2d(
                                cin, widths[i - 1], 4, stride=2, padding=1, bias=False
                            ),
                            nn.BatchNorm2d(widths[i - 1]),
                        )
                    )
            self.downs = nn.ModuleList(downs)
            self.ups = nn.ModuleList(ups)
        self.to_empty(device="cpu")
        # Dropout after the up-convolutions of the ngf*8 levels next to the bottleneck.
        self.drop_levels = tuple(i for i in range(4, n - 1))
        self.drop = _Dropout(self.dropout)
        init_pix2pix_weights(self, seed)

    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments that define the architecture (stored with the weights)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "ngf": self.ngf,
            "num_downs": self.num_downs,
            "dropout": self.dropout,
            "noise_channels": self.noise_channels,
        }

    def forward(self, x: Tensor, *, dropout_generator: torch.Generator | None = None) -> Tensor:
        """Output in ``[-1, 1]``, ``(B, out_channels, H, W)``, of a ``(B, in_channels, H, W)`` input.

        Args:
            x: the input batch, any ``H, W``.
            dropout_generator: the generator of the dropout masks; required in training mode
                when ``dropout > 0`` and the model has dropout levels.

        Raises:
            ValueError: wrong input shape, or training mode without ``dropout_generator``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNetGenerator input must have shape (B, {self.in_channels}, H, W). "
                f"Got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = 2**self.num_downs
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        n = self.num_downs
        x = skips.pop()
        for i in reversed(range(n)):
            if i < n - 1:
                x = torch.cat([skips.pop(), x], dim=1)
            x = self.ups[i](x)
            if i in self.drop_levels:
                x = self.drop(x, dropout_generator)
        return x[..., :h, :w]


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(B, in_channels, H, W)`` -> real/fake logits ``(B, 1, H', W')``.

    With ``n_layers = 3`` each logit sees a 70x70 patch (the pix2pix default).

    Args:
        in_channels: condition + image channels (2: mask and image).
        ndf: channels of the first layer (64 in the reference).
        n_layers: stride-2 layers after the first.
        seed: seed of the weight initialisation.

    Example:
        >>> d = PatchDiscriminator(ndf=4).eval()
        >>> d(torch.zeros(1, 2, 70, 70)).shape
        torch.Size([1, 1, 6, 6])
    """

    def __init__(
        self, in_channels: int = 2, ndf: int = 64, n_layers: int = 3, *, seed: int = 0
    ) -> None:
        super().__init__()
        self.in_channels = _int_arg(in_channels, "in_channels", 1)
        self.ndf = _int_arg(ndf, "ndf", 1)
        self.n_layers = _int_arg(n_layers, "n_layers", 1)
        with torch.device("meta"):
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2),
            ]
            mult = 1
            for k in range(1, n_layers + 1):
                prev, mult = mult, min(2**k, 8)
                stride = 2 if k < n_layers else 1
                layers += [
                    nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(ndf * mult),
                    nn.LeakyReLU(0.2),
                ]
            layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
            self.net = nn.Sequential(*layers)
        self.to_empty(device="cpu")
        init_pix2pix_weights(self, seed)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "ndf": self.ndf, "n_layers": self.n_layers}

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a ``(B, in_channels, H, W)`` batch (condition and image concatenated)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator input must have shape (B, {self.in_channels}, H, W). "
                f"Got {tuple(x.shape)}"
            )
        return self.net(x)


def init_pix2pix_weights(model: nn.Module, seed: int) -> nn.Module:
    """The reference initialisation, drawn from ``torch.Generator().manual_seed(seed)``.

    Convolution weights ~ N(0, 0.02), biases 0; batch-norm weights ~ N(1, 0.02), biases 0,
    running statistics reset. Values are drawn on the CPU in module order and copied to the
    parameters' device, so a seed gives the same weights everywhere.

    Args:
        model: a module of convolutions and batch norms (plus parameter-free modules).
        seed: a non-negative int.

    Returns:
        ``model``.

    Raises:
        ValueError: a negative seed, or parameters in a module type not covered.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int. Got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    uncovered = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                w = torch.empty(module.weight.shape).normal_(0.0, INIT_STD, generator=gen)
                module.weight.copy_(w)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                w = torch.empty(module.weight.shape).normal_(1.0, INIT_STD, generator=gen)
                module.weight.copy_(w)
                module.bias.zero_()
                module.reset_running_stats()
            elif any(True for _ in module.parameters(recurse=False)):
                uncovered.append(type(module).__name__)
    if uncovered:
        raise ValueError(
            f"init_pix2pix_weights covers Conv2d, ConvTranspose2d and BatchNorm2d. Got {uncovered}"
        )
    return model


def generator_input(mask: Tensor, seeds: Tensor | int, noise_channels: int) -> Tensor:
    """The generator's input: the mask as ``-1/+1`` plus ``noise_channels`` N(0, 1) channels.

    The noise of a row is a pure function of its seed (stream :data:`streams.GAN_INPUT`).

    Args:
        mask: ``(B, 1, H, W)`` bool (or 0/1) mask.
        seeds: per-row seeds, an int or ``(B,)`` int64.
        noise_channels: number of noise channels (``>= 0``).

    Returns:
        ``(B, 1 + noise_channels, H, W)`` float32 on the mask's device.

    Raises:
        ValueError: wrong mask shape or seeds.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a (B, 1, H, W) tensor. Got {shape}")
    b, _, h, w = mask.shape
    cond = mask.to(torch.float32) * 2.0 - 1.0
    if noise_channels == 0:
        return cond
    seeds = check_seeds(seeds, b, mask.device)
    noise = rng.normal(seeds, (noise_channels, h, w), streams.GAN_INPUT)
    return torch.cat([cond, noise], dim=1)


def to_unit(y: Tensor) -> Tensor:
    """Map a generator output from ``[-1, 1]`` to the normalised intensity range ``[0, 1]``."""
    return (y.float() + 1.0).mul_(0.5).clamp_(0.0, 1.0)


def normalise_pair(image: Tensor, mask: Tensor) -> Tensor:
    """Scale real images so the foreground mean is :data:`FG_LEVEL`, clipped to ``[0, 1]``.

    Args:
        image: ``(B, 1, H, W)`` float, non-negative, any linear scale (8- or 16-bit values).
        mask: ``(B, 1, H, W)`` bool, each sample with foreground.

    Returns:
        ``(B, 1, H, W)`` float32 in ``[0, 1]``.

    Raises:
        ValueError: a sample without foreground or with a non-positive foreground mean.
    """
    fg = mask.to(image.dtype)
    count = fg.flatten(1).sum(1)
    if bool((count == 0).any()):
        raise ValueError("normalise_pair needs foreground in every mask. Got an empty mask")
    mean = (image * fg).flatten(1).sum(1) / count
    if bool((mean <= 0).any()):
        raise ValueError(f"foreground mean must be > 0. Got {mean.min().item():g}")
    return (image / mean[:, None, None, None] * FG_LEVEL).clamp(0.0, 1.0).float()


# --------------------------------------------------------------------------- files
_CLASSES: dict[str, type[nn.Module]] = {
    "UNetGenerator": UNetGenerator,
    "PatchDiscriminator": PatchDiscriminator,
}


def save_weights(
    model: UNetGenerator | PatchDiscriminator,
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, Any],
) -> str:
    """Write a model's weights (CPU float32) and architecture to ``path``; return the sha256.

    Args:
        model: a :class:`UNetGenerator` or :class:`PatchDiscriminator`.
        path: target ``.safetensors`` file (written atomically; folders are created).
        metadata: JSON-serialisable facts stored in the header (returned by
            :func:`load_weights`).

    Raises:
        TypeError: another model class, or metadata that is not JSON-serialisable.
    """
    name = type(model).__name__
    if name not in _CLASSES:
        raise TypeError(f"model must be one of {sorted(_CLASSES)}. Got {name}")
    try:
        meta_json = json.dumps(metadata, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable. Got {err}") from err
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    # Integer buffers (num_batches_tracked) keep their dtype.
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            tensors[k] = v.detach().to("cpu").contiguous()
    arch = {"class": name, **model.hparams}
    header = {
        _HEADER_KEY: json.dumps(
            {"architecture": arch, "metadata": json.loads(meta_json)}, sort_keys=True
        )
    }
    digest = atomic_save(tensors, Path(path), header)
    logger.info("saved %s (%s, sha256 %s)", path, name, digest)
    return digest


def load_weights(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a file written by :func:`save_weights`: ``(model in eval mode, metadata)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a pix2pix weights file, or tensors that do not fit the architecture.
    """
    from safetensors.torch import load_file

    path = Path(path)
    content = read_record(path, _HEADER_KEY, "weights")
    arch = dict(content["architecture"])
    cls = _CLASSES.get(arch.pop("class", None))
    if cls is None:
        raise ValueError(
            f"{path} must hold one of {sorted(_CLASSES)}. Got {content['architecture']}"
        )
    try:
        model = cls(**arch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} has an invalid architecture header. Got {err}") from err
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: tensors do not fit the architecture {arch}. Got {err}") from err
    return model.to(device).eval(), content.get("metadata", {})
