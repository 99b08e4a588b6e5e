"""The reference U-Net of the benchmark, in plain torch, and its safetensors file format.

Ronneberger et al. 2015 with batch norm: ``depth`` resolution levels, two 3x3 convolutions
(conv - BN - ReLU) per level, max-pooling down, 2x2 transposed convolutions up, skip
connections by concatenation and a 1x1 head. Level ``l`` has ``base_channels * 2**l``
channels. The default (base 16, depth 4: 16-32-64-128 channels, 0.47 M parameters, 1.9 MB)
trains on CPU in minutes on a few hundred 256x256 images; inputs of any size are padded
(replicate) to a multiple of ``2**(depth - 1)`` and the output is cropped back.

Weights are initialised from an explicit seed (Kaiming-normal from a seeded
``torch.Generator``, built on the meta device first so that the global RNG is never touched).

A saved model is one ``.safetensors`` file: the state dict, plus one header metadata entry,
``fluorobench.model`` (:data:`synthesis.models.weights.MODEL_HEADER_KEY`, read by
:func:`synthesis.models.weights.read_model_record`), holding JSON ``{"architecture": {constructor arguments}, "metadata":
{caller's metadata}}``, so :func:`load_model` needs nothing else. One entry, because the
safetensors writer orders header metadata through a hash map: with several entries the same
model could be written as different bytes, hence a different sha256.

:class:`UNet` is a ``huggingface_hub.PyTorchModelHubMixin``: ``UNet.from_pretrained`` loads
a Hub model repo or a folder holding ``config.json`` (the constructor arguments) and
``model.safetensors`` (``fluorobench-c publish --models-repo`` uploads each package's
reference U-Nets that way, the safetensors file byte for byte); ``save_pretrained`` and
``push_to_hub`` work too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

__all__ = ["UNet", "init_weights", "load_model", "save_model"]

from synthesis.models.weights import MODEL_HEADER_KEY, atomic_save, read_model_record
from synthesis.thread_invariant import pointwise_conv

logger = logging.getLogger(__name__)

_CONV = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int. Got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Got {value}")
    return value


class UNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="fluorobench-c",
    tags=["microscopy", "fluorescence", "segmentation", "u-net"],
    pipeline_tag="image-segmentation",
):
    """U-Net for binary segmentation: ``(B, in_channels, H, W)`` -> logits ``(B, out_channels, H, W)``.

    Args:
        in_channels: input channels (1 for the benchmark's images).
        out_channels: 1 (one foreground logit, sigmoid) or 2 (background/foreground, softmax);
            any positive number is accepted.
        base_channels: channels of the first level; level ``l`` has ``base_channels * 2**l``.
        depth: number of resolution levels (``depth - 1`` poolings).
        seed: seed of the weight initialisation (see :func:`init_weights`).

    Raises:
        TypeError: a non-int argument.
        ValueError: an argument < 1.

    Example:
        >>> net = UNet(base_channels=4, depth=3, seed=0)
        >>> net(torch.zeros(2, 1, 20, 24)).shape
        torch.Size([2, 1, 20, 24])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        depth: int = 4,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.base_channels = _positive_int(base_channels, "base_channels")
        self.depth = _positive_int(depth, "depth")
        widths = [base_channels * 2**level for level in range(depth)]
        # Built on the meta device: no memory and no draw from the global RNG; the real
        # weights come from init_weights with an explicit seed.
        with torch.device("meta"):
            self.down = nn.ModuleList(
                _double_conv(cin, cout)
                for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True)
            )
            self.up = nn.ModuleList(
                nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
                for level in reversed(range(depth - 1))
            )
            self.merge = nn.ModuleList(
                _double_conv(2 * widths[level], widths[level])
                for level in reversed(range(depth - 1))
            )
            self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.to_empty(device="cpu")
        init_weights(self, seed)

    @property
    def hparams(self) -> dict[str, int]:
        """The constructor arguments that define the architecture (stored with saved weights)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "depth": self.depth,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, out_channels, H, W)`` of a ``(B, in_channels, H, W)`` batch.

        Raises:
            ValueError: wrong number of dimensions or channels.
        """
        h, w = x.shape[-2:] if x.dim() == 4 else (0, 0)
        return self._head(self._decode(x))[..., :h, :w]

    def features(self, x: Tensor) -> Tensor:
        """The last decoder block's output ``(B, base_channels, H, W)``: the per-pixel
        features the 1x1 head turns into logits (``forward`` is the head of these).

        Raises:
            ValueError: wrong number of dimensions or channels.
        """
        h, w = x.shape[-2:] if x.dim() == 4 else (0, 0)
        return self._decode(x)[..., :h, :w]

    def _decode(self, x: Tensor) -> Tensor:
        """The last decoder block's output on ``x`` padded to a multiple of the depth's
        stride (replicate padding; the caller crops)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet input must have shape (B, {self.in_channels}, H, W). Got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        m = 2 ** (self.depth - 1)
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return x

    def _head(self, x: Tensor) -> Tensor:
        # The 1x1 head by fixed-order sums: oneDNN's gives other bits at other thread counts.
        return pointwise_conv(x, self.head.weight, self.head.bias)


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Initialise every layer of ``model`` in place from ``seed``, without global RNG.

    Convolutions and linear layers: Kaiming-normal weights (ReLU gain, fan-in), zero biases;
    normalisation layers: unit weights, zero biases, reset running statistics. Values are
    drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in module order and copied
    to the parameters' device, so the same seed gives the same weights on every device.

    Args:
        model: a module built from convolutions, linear and normalisation layers (plus
            parameter-free modules).
        seed: a non-negative int.

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: a negative seed, or a module holding parameters of a type not covered.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int. Got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    uncovered = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (*_CONV, nn.Linear)):
                w = torch.empty(module.weight.shape, dtype=module.weight.dtype)
                nn.init.kaiming_normal_(w, nonlinearity="relu", generator=gen)
                module.weight.copy_(w)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, _NORM):
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
            elif any(True for _ in module.parameters(recurse=False)):
                uncovered.append(type(module).__name__)
    if uncovered:
        raise ValueError(
            "init_weights covers convolutions, linear and normalisation layers only. "
            f"Got parameters in {sorted(set(uncovered))}"
        )
    return model


def save_model(model: UNet, path: str | os.PathLike[str], *, metadata: dict[str, Any]) -> str:
    """Write ``model`` to a ``.safetensors`` file atomically and return the file's sha256.

    The file is written under a temporary name in the target folder and renamed, so a reader
    never sees a partial file.

    Args:
        model: the :class:`UNet` to save (any device; weights are stored as CPU float32).
        path: the target file; its folder is created if missing.
        metadata: JSON-serialisable facts to store with the weights (training settings,
            validation IoU...); returned by :func:`load_model`.

    Returns:
        The sha256 hex digest of the written file.

    Raises:
        TypeError: ``model`` is not a :class:`UNet` or ``metadata`` is not JSON-serialisable.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"model must be a synthesis.models.unet.UNet. Got {type(model).__name__}")
    record = {"architecture": {"class": "UNet", **model.hparams}, "metadata": metadata}
    try:
        header = {MODEL_HEADER_KEY: json.dumps(record, sort_keys=True)}
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serialisable. Got {err}") from err
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    digest = atomic_save(tensors, Path(path), header)
    logger.info("saved %s (%d tensors, sha256 %s)", path, len(tensors), digest)
    return digest


def load_model(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[UNet, dict[str, Any]]:
    """Read a model written by :func:`save_model`.

    Args:
        path: the ``.safetensors`` file.
        device: where to put the model.

    Returns:
        ``(model, metadata)``: the :class:`UNet` in eval mode, and the metadata given to
        :func:`save_model`.

    Raises:
        FileNotFoundError: no such file.
        synthesis.models.weights.WeightsFileError: not a safetensors file, or no U-Net record
            in its header (a ``ValueError``).
        ValueError: the record names another architecture, or the tensors do not fit it.
    """
    from safetensors.torch import load_file

    path = Path(path)
    record = read_model_record(path)
    arch = dict(record.get("architecture", {}))
    if arch.pop("class", None) != "UNet":
        raise ValueError(f"{path} must hold a UNet. Got architecture {record.get('architecture')}")
    try:
        model = UNet(**arch)
    except TypeError as err:
        raise ValueError(f"{path} has an invalid architecture header. Got {err}") from err
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: the tensors do not fit the stored architecture {arch}. Got {err}"
        ) from err
    return model.to(device).eval(), record.get("metadata", {})
