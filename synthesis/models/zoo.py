"""A zoo of 2-D, one-channel, binary segmentation architectures for the leaderboard.

Built from MONAI's ``monai.networks.nets`` (the field's maintained model library; optional:
``pip install fluorobench-c[zoo]``), plus the project's own reference U-Net. Each entry maps
``(B, 1, H, W)`` to ``(B, 1, H, W)`` foreground logits for H, W multiples of 32 (the
benchmark's images are 256x256).

The families of the original study (Zhong, Li & Yang 2024: U-Net, FCN, SegNet, DeepLab, a
Vision Transformer...) and the entry that covers each:

=================  =====================================  =================================
name               family                                 MONAI class
=================  =====================================  =================================
``unet``           plain encoder-decoder (reference)      ours (``synthesis.models.unet``)
``basic_unet``     plain encoder-decoder                  ``BasicUNet``
``res_unet``       residual encoder-decoder               ``UNet`` with residual units
``attention_unet`` attention gates on the skips           ``AttentionUnet``
``segresnet``      residual encoder, light decoder        ``SegResNet``
``highresnet``     dilated convolutions (context, as      ``HighResNet``
                   DeepLab's atrous convolutions)
``unetr``          transformer (ViT encoder)              ``UNETR``
``swin_unetr``     hierarchical transformer (Swin)        ``SwinUNETR``
=================  =====================================  =================================

Not covered: SegNet (pooling-index unpooling) and FCN-8s have no MONAI class; DeepLab's ASPP
is represented by dilated convolutions only. ``UNETR`` needs a fixed input size (its
position embeddings): it is built for 256x256 and so trained on whole images like every entry.

Weights come from an explicit seed: each model is built under ``torch.random.fork_rng`` with
``torch.manual_seed(seed)``, so the global RNG outside is untouched and the same seed gives
the same weights.

Two presets: ``small`` (widths for a 2-core CPU: the whole leaderboard of one config in about
20 minutes, indicative) and ``full`` (the widths of the original architectures, for GPUs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRESETS",
    "ZOO",
    "ZooEntry",
    "build",
    "count_parameters",
    "require_monai",
    "zoo_names",
]

PRESETS: tuple[str, ...] = ("small", "full")
#: The image size the transformer entries are built for.
IMAGE_SIZE = 256


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    library: str  # "monai" or "fluorobench-c"
    make: Callable[[str, int], nn.Module]  # (preset, seed) -> module
    #: Constructor arguments per preset, recorded with the weights.
    kwargs: Callable[[str], dict[str, Any]]


def _monai() -> Any:
    try:
        import einops  # noqa: F401  (MONAI's transformers need it)
        import monai.networks.nets as nets
    except ImportError as exc:  # the optional extra
        raise ImportError(
            f"the leaderboard's zoo needs MONAI and einops ({exc}): pip install "
            "'fluorobench-c[zoo]'"
        ) from exc
    return nets


def require_monai() -> None:
    """Raise ImportError (with the install command) when the ``[zoo]`` extra is missing."""
    _monai()


def _small(preset: str) -> bool:
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}. Got {preset!r}")
    return preset == "small"


#: What every MONAI entry is: 2-D, one channel in, one foreground logit out.
_IO: dict[str, Any] = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1}


def _unet_kwargs(p: str) -> dict[str, Any]:
    return {"base_channels": 8 if _small(p) else 32, "depth": 4}


def _basic_kwargs(p: str) -> dict[str, Any]:
    f = (8, 16, 32, 64, 128, 8) if _small(p) else (32, 32, 64, 128, 256, 32)
    return {**_IO, "features": f}


def _attention_kwargs(p: str) -> dict[str, Any]:
    """MONAI's ``AttentionUnet``; with residual units added, its ``UNet`` (same widths)."""
    ch = (8, 16, 32, 64) if _small(p) else (32, 64, 128, 256, 512)
    return {
        **_IO,
        "channels": ch,
        "strides": (2,) * (len(ch) - 1),
    }


def _res_kwargs(p: str) -> dict[str, Any]:
    return {**_attention_kwargs(p), "num_res_units": 2}


def _segresnet_kwargs(p: str) -> dict[str, Any]:
    return {**_IO, "init_filters": 8 if _small(p) else 32}


def _highresnet_kwargs(p: str) -> dict[str, Any]:
    if _small(p):
        layers = (
            {"name": "conv_0", "n_features": 8, "kernel_size": 3},
            {"name": "res_1", "n_features": 8, "kernels": (3, 3), "repeat": 1},
            {"name": "res_2", "n_features": 16, "kernels": (3, 3), "repeat": 1},
            {"name": "res_3", "n_features": 32, "kernels": (3, 3), "repeat": 1},
            {"name": "conv_1", "n_features": 32, "kernel_size": 1},
            {"name": "conv_2", "kernel_size": 1},
        )
        return {**_IO, "layer_params": layers}
    return dict(_IO)


def _unetr_kwargs(p: str) -> dict[str, Any]:
    small = _small(p)
    return {
        **_IO,
        "img_size": (IMAGE_SIZE, IMAGE_SIZE),
        "feature_size": 8 if small else 16,
        "hidden_size": 96 if small else 768,
        "mlp_dim": 192 if small else 3072,
        "num_heads": 4 if small else 12,
    }


def _swin_kwargs(p: str) -> dict[str, Any]:
    return {
        **_IO,
        "feature_size": 12 if _small(p) else 48,
        "depths": (1, 1, 1, 1) if _small(p) else (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
    }


def _ours(p: str, seed: int) -> nn.Module:
    from synthesis.models.unet import UNet

    return UNet(**_unet_kwargs(p), seed=seed)  # its own seeded initialisation


def _monai_net(
    cls: str, kwargs: Callable[[str], dict[str, Any]]
) -> Callable[[str, int], nn.Module]:
    def make(p: str, seed: int) -> nn.Module:  # drawn from the seeded global RNG (fork_rng)
        return getattr(_monai(), cls)(**kwargs(p))

    return make


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("unet", "plain encoder-decoder (reference)", "fluorobench-c", _ours, _unet_kwargs),
        ZooEntry(
            "basic_unet",
            "plain encoder-decoder",
            "monai",
            _monai_net("BasicUNet", _basic_kwargs),
            _basic_kwargs,
        ),
        ZooEntry("res_unet", "residual", "monai", _monai_net("UNet", _res_kwargs), _res_kwargs),
        ZooEntry(
            "attention_unet",
            "attention",
            "monai",
            _monai_net("AttentionUnet", _attention_kwargs),
            _attention_kwargs,
        ),
        ZooEntry(
            "segresnet",
            "residual",
            "monai",
            _monai_net("SegResNet", _segresnet_kwargs),
            _segresnet_kwargs,
        ),
        ZooEntry(
            "highresnet",
            "dilated context",
            "monai",
            _monai_net("HighResNet", _highresnet_kwargs),
            _highresnet_kwargs,
        ),
        ZooEntry(
            "unetr", "transformer (ViT)", "monai", _monai_net("UNETR", _unetr_kwargs), _unetr_kwargs
        ),
        ZooEntry(
            "swin_unetr",
            "transformer (Swin)",
            "monai",
            _monai_net("SwinUNETR", _swin_kwargs),
            _swin_kwargs,
        ),
    )
}


def zoo_names() -> list[str]:
    return list(ZOO)


def build(name: str, preset: str = "small", *, seed: int = 0) -> nn.Module:
    """The zoo model ``name`` at ``preset``, weights drawn from ``seed`` (the global RNG is
    left as it was).

    Raises:
        KeyError: an unknown name (the message lists the zoo).
        ValueError: an unknown preset.
        ImportError: MONAI is not installed (for a MONAI entry).
    """
    if name not in ZOO:
        raise KeyError(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    _small(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZOO[name].make(preset, seed)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
