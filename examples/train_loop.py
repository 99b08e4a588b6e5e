"""Recipe: train on a FluoroBench-C split in a plain PyTorch loop, with several workers.

    python examples/train_loop.py fluorobench-c --config mito --epochs 2 --workers 2

The split is streamed (``fluorobench_c.load``); a ``DataLoader`` with ``num_workers`` hands
each worker whole Parquet shards, so use at most as many workers as the split has shards
(``ds.num_shards``; build with ``--rows-per-shard`` to get more). ``Collate`` turns rows into
float32 ``(B, 1, H, W)`` images (z-scored per image, as the reference models) and 0/1 masks.
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch.utils.data import DataLoader

import fluorobench_c

logger = logging.getLogger(__name__)


def make_loader(data: str, config: str, split: str, batch_size: int, workers: int) -> DataLoader:
    ds = fluorobench_c.load(data, config, split, columns=fluorobench_c.MODEL_COLUMNS)
    workers = min(workers, ds.num_shards)  # a worker without a shard would sit idle
    return DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=fluorobench_c.Collate(normalize="zscore"),
        persistent_workers=workers > 0,
    )


def train(
    model: torch.nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[dict]:
    """Train ``model`` with BCE on the loader; return one record per epoch (loss, ids seen)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(epochs):
        model.train()
        total, n, ids = 0.0, 0, []
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["mask"])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["id"])
            n += len(batch["id"])
            ids += batch["id"]
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1), "ids": ids})
        logger.info("epoch %d: loss %.4f over %d images", epoch + 1, total / max(n, 1), n)
    return history


def main() -> None:
    from synthesis.models.unet import UNet

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="package folder or Hub dataset id")
    p.add_argument("--config", default="mito")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loader = make_loader(args.data, args.config, "train", args.batch_size, args.workers)
    for record in train(UNet(seed=0), loader, args.epochs):
        print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, {len(record['ids'])} images")


if __name__ == "__main__":
    main()
