"""Recipe: evaluate a MONAI model on FluoroBench-C.

    pip install monai
    fluorobench-c evaluate --data fluorobench-c --config mito \
        --model examples/monai_unet.py:make_model --out results/monai

``evaluate`` calls ``make_model()`` and feeds it per-image z-scored ``(B, 1, 256, 256)``
images (``--normalize``); the model must return ``(B, 1, H, W)`` foreground logits (or
``(B, 2, H, W)`` background/foreground logits). Load your trained weights in the factory.
"""

from __future__ import annotations

import os

import torch
from monai.networks.nets import BasicUNet


def make_model() -> torch.nn.Module:
    """A 2-D, one-channel MONAI BasicUNet; weights from ``$MONAI_WEIGHTS`` when set."""
    model = BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=1, features=(16, 32, 64, 128, 256, 16)
    )
    weights = os.environ.get("MONAI_WEIGHTS")
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()
