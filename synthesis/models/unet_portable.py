"""The reference U-Net in plain torch, self-contained: the architecture source of a bioimage.io
package (``export-model --format bioimageio``).

Tools that run bioimage.io models (``bioimageio.core``, deepImageJ, ilastik) import the
architecture from one file that may import nothing but torch; this is that file. It has the
state-dict layout of :class:`synthesis.models.unet.UNet` (``down``, ``up``, ``merge``,
``head``), so the same weights load into both, and computes the same function: the 1x1 head is
an ordinary convolution here (``UNet`` sums it in a fixed order for thread-count invariance),
so outputs agree to float32 rounding, not bit for bit. It is TorchScript-compatible
(``torch.jit.script``), which gives the package's ``torchscript`` weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: ``(B, in_channels, H, W)`` -> logits ``(B, out_channels, H, W)``; any ``H, W``
    (padded by replication to a multiple of ``2**(depth - 1)``, the output cropped back).

    Example:
        >>> net = UNet(base_channels=4, depth=3).eval()
        >>> net(torch.zeros(2, 1, 20, 24)).shape
        torch.Size([2, 1, 20, 24])
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 16, depth: int = 4
    ) -> None:
        super().__init__()
        self.depth = depth
        widths = [base_channels * 2**level for level in range(depth)]
        self.down = nn.ModuleList(
            [
                _double_conv(cin, cout)
                for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True)
            ]
        )
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
                for level in reversed(range(depth - 1))
            ]
        )
        self.merge = nn.ModuleList(
            [_double_conv(2 * widths[level], widths[level]) for level in reversed(range(depth - 1))]
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = 1 << (self.depth - 1)
        pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
        skips: list[torch.Tensor] = []
        level = 0
        for block in self.down:
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
            level += 1
        skips.pop()
        for up, merge in zip(self.up, self.merge):  # noqa: B905 (TorchScript has no strict=)
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)[:, :, :h, :w]
