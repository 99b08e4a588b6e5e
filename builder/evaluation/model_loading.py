"""The model side of ``evaluate``: what ``--model`` names, how it is loaded, and its input.

``--model`` is None (the package's reference U-Net), a ``.safetensors`` U-Net saved by
:func:`synthesis.models.unet.save_model`, a TorchScript file, ``path/module.py:factory``,
a U-Net in the Hub's model layout (``config.json`` + ``model.safetensors``): a Hub model id
such as ``ORG/NAME-mito`` (``publish --models-repo``) or a local folder, or a bioimage.io
model (``rdf.yaml``, a package zip, or a folder holding one:
:mod:`builder.evaluation.bioimageio_models`).
The input normalisation is the one of training (:mod:`synthesis.normalize`), except for a
bioimage.io model, which applies its own declared preprocessing.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthesis.normalize import NORMALIZATIONS, normalize
from synthesis.runtime.errors import InputError
from synthesis.runtime.files import sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


class ModelSpecError(InputError):
    """A ``--model`` that cannot be loaded or does not fit the data."""


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model. ``normalize``: the model input it needs, in place of ``--normalize``
    (``"none"`` for a bioimage.io model, which normalises its input itself); None: as given.
    ``no_gradients``: why white-box attacks cannot run on it (None: they can)."""

    model: nn.Module
    description: str
    sha256: str | None
    normalize: str | None = None
    no_gradients: str | None = None


def load_model_spec(
    spec: str | ModelInfo | None,
    data: str,
    config: str,
    device: torch.device,
    *,
    threshold: float | None = None,
    channel: str | None = None,
) -> ModelInfo:
    """Load ``--model``: None (the package's reference U-Net), a ``.safetensors`` file saved by
    :func:`synthesis.models.unet.save_model`, a TorchScript file, ``path/module.py:factory``,
    a U-Net model folder or Hub id, or a bioimage.io model (``rdf.yaml``, zip, or a folder
    holding one). ``threshold`` and ``channel`` (``--threshold``, ``--channel``): how a
    bioimage.io model's output becomes a mask (:mod:`builder.evaluation.bioimageio_models`).

    Raises:
        ModelSpecError: a missing file, a bad ``module.py:factory`` or a factory that does not
            return an ``nn.Module``; ``threshold`` or ``channel`` for a model that is not a
            bioimage.io model.
        builder.evaluation.bioimageio_models.BioimageioModelError: a bioimage.io model that
            cannot be loaded or mapped to a mask.
    """
    import dataclasses

    import torch
    from torch import nn

    from synthesis.models.unet import load_model

    if isinstance(spec, ModelInfo):  # a model already in memory (the leaderboard's)
        return dataclasses.replace(spec, model=spec.model.to(device).eval())
    if isinstance(spec, str):
        from builder.evaluation.bioimageio_models import is_bioimageio_source

        if is_bioimageio_source(spec):
            from builder.evaluation.bioimageio_models import load_bioimageio_model

            return load_bioimageio_model(spec, device, threshold=threshold, channel=channel)
    if threshold is not None or channel is not None:
        raise ModelSpecError(
            f"--threshold and --channel apply to bioimage.io models (rdf.yaml or zip). Got --model {spec}"
        )
    if spec is None or spec == "reference":
        rel = f"models/{config}-unet.safetensors"
        if Path(data).is_dir():
            path = Path(data) / rel
            if not path.exists():
                raise ModelSpecError(
                    f"{path}: the package has no reference model (build it with attack splits)"
                )
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(data, rel, repo_type="dataset"))
        model, _ = load_model(path, device=device)
        return ModelInfo(model, f"reference U-Net ({rel})", sha256_file(path))
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        factory_name = spec.split(":", 1)[1]
        factory, path = load_callable(spec, "--model")
        model = factory()
        if not isinstance(model, nn.Module):
            raise ModelSpecError(
                f"--model {spec}: {factory_name}() must return a torch.nn.Module. Got {type(model).__name__}"
            )
        return ModelInfo(model.to(device).eval(), spec, sha256_file(path))
    path = Path(spec)
    if path.is_dir() or (not path.exists() and _is_repo_id(spec)):
        return _load_pretrained(spec, device)
    if not path.is_file():
        raise ModelSpecError(
            f"--model {spec}: no such file (expected a .safetensors or TorchScript file, or module.py:factory)"
        )
    if path.suffix == ".safetensors":
        model, _ = load_model(path, device=device)
        return ModelInfo(model, path.name, sha256_file(path))
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError or ValueError for non-TorchScript files
        raise ModelSpecError(f"--model {spec}: not a TorchScript file ({exc})") from exc
    return ModelInfo(model.eval(), path.name, sha256_file(path))


def load_callable(spec: str, option: str) -> tuple[Callable[..., Any], Path]:
    """The function ``name`` of ``path/module.py:name`` (imported from that file), and the
    file.

    Raises:
        ModelSpecError: not ``FILE.py:NAME``, a missing or unimportable file, or no callable
            of that name (the message names ``option`` and the file).
    """
    file, _, name = spec.partition(":")
    if not file.endswith(".py") or not name:
        raise ModelSpecError(f"{option} {spec}: expected path/module.py:function")
    path = Path(file)
    if not path.is_file():
        raise ModelSpecError(f"{option} {spec}: {path} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"_fluorobench_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ModelSpecError(f"{option} {spec}: {path} is not an importable Python file")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report whatever it raised
        raise ModelSpecError(f"{option} {spec}: importing {path} failed: {exc!r}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ModelSpecError(f"{option} {spec}: {path} has no callable {name!r}")
    return fn, path


def _is_repo_id(spec: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if spec.count("/") != 1 or spec.endswith((".pt", ".ts", ".safetensors", ".py")):
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def _load_pretrained(spec: str, device: torch.device) -> ModelInfo:
    """A U-Net in the Hub's model layout: a local folder or a Hub model id."""
    from synthesis.models.unet import UNet

    folder = Path(spec)
    try:
        if folder.is_dir():
            weights = folder / "model.safetensors"
            if not weights.is_file() or not (folder / "config.json").is_file():
                raise ModelSpecError(
                    f"--model {spec}: a model folder needs config.json and model.safetensors"
                )
        else:
            from huggingface_hub import hf_hub_download

            weights = Path(hf_hub_download(spec, "model.safetensors", repo_type="model"))
        model = UNet.from_pretrained(spec, strict=True)
    except ModelSpecError:
        raise
    except Exception as exc:  # the Hub's or the loader's error: name the model and why
        raise ModelSpecError(
            f"--model {spec}: cannot load it as a FluoroBench-C U-Net ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return ModelInfo(model.to(device).eval(), spec, sha256_file(weights))


def make_preprocess(how: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model input of ``--normalize`` (:mod:`synthesis.normalize`, as in training)."""
    if how not in NORMALIZATIONS:
        raise InputError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}. Got {how!r}")
    return functools.partial(normalize, how=how)


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch

    from synthesis.metrics import check_logits, logits_to_mask
    from synthesis.thread_invariant import model_threads

    with torch.no_grad(), model_threads(x.device):
        logits = model(x)
    try:
        check_logits(logits, x)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(
            f"the model's output does not fit: expected (B, 1 or 2, H, W) logits for input "
            f"{tuple(x.shape)}. Got {exc}"
        ) from exc
    return logits_to_mask(logits)


def usable_attacks(
    info: ModelInfo,
    attacks: list[tuple[str, float]] | None,
    gradient_free: tuple[str, ...] = (),
) -> tuple[list[tuple[str, float]], str | None]:
    """The white-box attacks that can run on the model, and why the others are skipped (None
    when none is): attacks that need gradients are skipped for a model without them
    (:attr:`ModelInfo.no_gradients`, e.g. a bioimage.io model with ONNX weights); those in
    ``gradient_free`` still run."""
    attacks = list(attacks or [])
    if info.no_gradients is None:
        return attacks, None
    skipped = [(m, e) for m, e in attacks if m not in gradient_free]
    if not skipped:
        return attacks, None
    names = ", ".join(f"{m}:{e:g}" for m, e in skipped)
    reason = f"white-box attacks {names} skipped: {info.no_gradients}"
    logger.warning("%s: %s", info.description, reason)
    return [a for a in attacks if a not in skipped], reason
