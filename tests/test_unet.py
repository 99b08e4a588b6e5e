"""The reference U-Net: shapes, seeded initialisation, safetensors round trip, errors."""

import hashlib
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from synthesis.models.unet import UNet, init_weights, load_model, save_model


@pytest.mark.parametrize("out_channels", [1, 2])
@pytest.mark.parametrize("size", [(16, 16), (20, 28), (7, 13)])
def test_output_shape_any_size(out_channels, size):
    net = UNet(out_channels=out_channels, base_channels=4, depth=3).eval()
    x = torch.randn(3, 1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
    assert y.shape == (3, out_channels, *size)
    assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())


def test_batch_equals_per_image_in_eval_mode():
    net = UNet(base_channels=4, depth=3, seed=3).eval()
    x = torch.randn(4, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batch = net(x)
        rows = torch.cat([net(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, rows, rtol=1e-5, atol=1e-5)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = UNet(seed=7), UNet(seed=7), UNet(seed=8)
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["down.0.0.weight"], sc["down.0.0.weight"])


def test_kaiming_init_statistics():
    # Kaiming-normal (ReLU gain): std = sqrt(2 / fan_in). The 64->128 3x3 convolution of the
    # default model has 73,728 weights: the sample std is within 1% (about 4 standard errors).
    net = UNet(seed=0)
    w = net.down[3][0].weight
    assert w.shape == (128, 64, 3, 3)
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.01)
    assert abs(w.mean().item()) < 4 * math.sqrt(2 / (64 * 9)) / math.sqrt(w.numel())
    bn = net.down[0][1]
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.running_var, torch.ones(16))


def test_reference_model_size(tmp_path):
    net = UNet()  # the reference architecture: base 16, depth 4
    n = sum(p.numel() for p in net.parameters())
    assert 400_000 < n < 600_000
    save_model(net, tmp_path / "ref.safetensors", metadata={})
    assert (tmp_path / "ref.safetensors").stat().st_size < 5 * 2**20


def test_save_load_round_trip(tmp_path):
    net = UNet(out_channels=2, base_channels=4, depth=3, seed=5)
    # Train-mode passes change the batch-norm running statistics, which must be saved too.
    net(torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2)))
    net.eval()
    meta = {"config": "mito", "val_iou": 0.83, "settings": {"epochs": 3, "lr": 1e-3}}
    path = tmp_path / "models" / "mito-unet.safetensors"
    digest = save_model(net, path, metadata=meta)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["mito-unet.safetensors"]  # no temp left
    loaded, got = load_model(path)
    assert got == meta
    assert loaded.hparams == net.hparams and not loaded.training
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    # Same weights and metadata -> the same bytes, so the sha256 identifies the model.
    assert save_model(loaded, tmp_path / "again.safetensors", metadata=meta) == digest


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="not a FluoroBench-C model.*Got keys"):
        load_model(plain)
    # A valid header whose tensors belong to another architecture.
    good = tmp_path / "good.safetensors"
    save_model(UNet(base_channels=4, depth=3), good, metadata={})
    small = UNet(base_channels=4, depth=2)
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        header = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(bad), metadata=header)
    with pytest.raises(ValueError, match="do not fit the stored architecture"):
        load_model(bad)


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match="must be a synthesis.models.unet.UNet. Got Conv2d"):
        save_model(nn.Conv2d(1, 1, 1), tmp_path / "x.safetensors", metadata={})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_model(
            UNet(base_channels=2, depth=2), tmp_path / "x.safetensors", metadata={"t": {1, 2}}
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_specs():
    with pytest.raises(ValueError, match="depth must be >= 1. Got 0"):
        UNet(depth=0)
    with pytest.raises(TypeError, match="base_channels must be an int. Got float"):
        UNet(base_channels=16.0)
    with pytest.raises(
        ValueError, match=r"input must have shape \(B, 1, H, W\). Got \(2, 3, 8, 8\)"
    ):
        UNet(base_channels=2, depth=2)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        UNet(seed=-1)


def test_init_weights_rejects_uncovered_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Embedding(4, 2))
    with pytest.raises(ValueError, match=r"Got parameters in \['Embedding'\]"):
        init_weights(model, 0)
