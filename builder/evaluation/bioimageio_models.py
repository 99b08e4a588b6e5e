"""bioimage.io models as ``--model``: ``evaluate --model PATH/rdf.yaml`` (or a package zip).

A bioimage.io model package (an ``rdf.yaml``, or ``bioimageio.yaml``, with its weights and
test tensors; https://bioimage.io) is read with ``bioimageio.spec`` (any format version,
converted to the latest; no file is fetched and no URL is checked) and becomes one torch
module that takes the benchmark's images as they are stored, ``(B, 1, H, W)`` float grey
levels, and returns one foreground logit per pixel (``(B, 1, H, W)``, foreground where > 0),
so it is scored like any other model with no normalisation of ours (``--normalize`` is
ignored). The module honours the description:

- **axes**: the image is laid out in the input's declared axis order (batch, channel, y, x;
  singleton axes such as ``z`` are added, a missing batch axis means one image per call);
  an image whose size the input does not accept is padded (replicate) to the next size it
  does, and the output cropped back (the torch form pads after the preprocessing, so its
  statistics are the image's own; the pipeline form pads before it);
- **preprocessing and postprocessing**: the declared steps (z-score, fixed z-score, linear
  scaling, percentile range scaling, clipping, sigmoid, softmax, dtype);
- **the output as a mask**: one output, one channel of it (``--channel`` by index or name
  when it has several), thresholded: at ``--threshold`` if given, else at 0.5 for a
  probability (declared range [0, 1], or a final sigmoid or softmax), at a final
  ``binarize`` step's threshold, or ``> 0`` for a label image (nominal data). Anything else
  cannot be mapped and is refused with what to state.

Two ways to run it:

- **torch** (weights ``pytorch_state_dict``, loaded by ``bioimageio.core`` with its
  architecture source, or ``torchscript``): the network with the pre- and postprocessing
  re-expressed in torch, so gradients flow from the logits to the stored image and
  white-box attacks (``--attacks``) run on it. On loading, this module's output on the
  package's own test input is checked against ``bioimageio.core``'s prediction within the
  package's reproducibility tolerance; a mismatch falls back to the pipeline below.
- **pipeline** (any other weights format: ONNX, TensorFlow, Keras; or processing steps not
  re-expressed in torch, such as StarDist's or custom ones): ``bioimageio.core``'s prediction
  pipeline, one image at a time. No gradients: :attr:`ModelInfo.no_gradients` says why, and
  ``evaluate`` skips white-box attacks with that reason.

Both need the optional ``bioimageio`` extra (``bioimageio.core``, ``bioimageio.spec``).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from synthesis.runtime.errors import InputError

if TYPE_CHECKING:
    from builder.evaluation.model_loading import ModelInfo

logger = logging.getLogger(__name__)

#: File names that mark a bioimage.io description.
RDF_NAMES: tuple[str, ...] = ("rdf.yaml", "bioimageio.yaml")
#: Weights formats with gradients, in the order they are preferred.
TORCH_FORMATS: tuple[str, ...] = ("pytorch_state_dict", "torchscript")
#: Default reproducibility tolerance (``bioimageio.core``'s defaults) for the load check.
DEFAULT_TOLERANCE = {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-3}
#: Clamp of a probability before its logit is taken.
_P_EPS = 1e-7


class BioimageioModelError(InputError):
    """A bioimage.io ``--model`` that cannot be loaded or mapped to a foreground mask."""


def is_bioimageio_source(spec: str) -> bool:
    """Whether ``--model`` names a bioimage.io description: a ``*.yaml``/``*.yml`` file, a
    ``.zip`` package, or a folder holding ``rdf.yaml`` or ``bioimageio.yaml``."""
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".zip"):
        return True
    return path.is_dir() and any((path / name).is_file() for name in RDF_NAMES)


@dataclass
class _Axes:
    """The model-side layout of one tensor: axis ids in order, and which are which."""

    ids: list[str]
    types: list[str]
    singleton: list[str] = field(default_factory=list)  # axes that must have size 1

    @property
    def has_batch(self) -> bool:
        return "batch" in self.types

    def index(self, axis_id: str) -> int:
        return self.ids.index(axis_id)


def load_bioimageio_model(
    spec: str,
    device: torch.device,
    *,
    threshold: float | None = None,
    channel: str | None = None,
) -> ModelInfo:
    """``--model`` as a bioimage.io model: a :class:`~builder.evaluation.model_loading.ModelInfo`
    whose module maps ``(B, 1, H, W)`` grey levels to ``(B, 1, H, W)`` foreground logits.

    Raises:
        BioimageioModelError: the extra is not installed, the file is missing or not a valid
            description, it is not a model, it has more than one input or output, its axes
            are not a 2-D single-channel image, or its output cannot be mapped to a mask.
    """
    from builder.evaluation.model_loading import ModelInfo
    from synthesis.runtime.files import sha256_file

    try:
        from bioimageio.spec import InvalidDescr, load_description
    except ImportError as exc:
        raise BioimageioModelError(
            f'--model {spec}: bioimage.io models need the bioimageio extra: pip install "fluorobench-c[bioimageio]" ({exc})'
        ) from exc
    path = Path(spec)
    if path.is_dir():
        path = next(path / n for n in RDF_NAMES if (path / n).is_file())
    if not path.is_file():
        raise BioimageioModelError(f"--model {spec}: no such file")
    declared = _declared_type(path)
    if declared is not None and declared != "model":
        raise BioimageioModelError(
            f"--model {spec}: a bioimage.io {declared!r} description, not a model"
        )
    try:
        descr = load_description(path, format_version="latest", perform_io_checks=False)
    except Exception as exc:  # bioimageio.spec raises for unreadable YAML or zips
        raise BioimageioModelError(
            f"--model {spec}: cannot read it as a bioimage.io description ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(descr, InvalidDescr):
        errors = [
            f"{'.'.join(map(str, e.loc))}: {e.msg}"
            for d in descr.validation_summary.details
            for e in d.errors
        ]
        raise BioimageioModelError(
            f"--model {spec}: not a valid bioimage.io description: {'; '.join(errors[:5]) or 'invalid'}"
        )
    if descr.type != "model":
        raise BioimageioModelError(
            f"--model {spec}: a bioimage.io {descr.type!r} description, not a model"
        )
    name = f"bioimage.io model {descr.name!r} ({spec})"
    if len(descr.inputs) != 1:
        raise BioimageioModelError(
            f"--model {spec}: the model has {len(descr.inputs)} inputs "
            f"({', '.join(str(t.id) for t in descr.inputs)}); FluoroBench-C images are one "
            "single-channel input"
        )
    if len(descr.outputs) != 1:
        raise BioimageioModelError(
            f"--model {spec}: the model has {len(descr.outputs)} outputs "
            f"({', '.join(str(t.id) for t in descr.outputs)}); one output is mapped to a mask"
        )
    in_axes = _input_axes(spec, descr.inputs[0])
    out_axes, channel_index = _output_axes(spec, descr.outputs[0], channel)
    mapping = _mask_mapping(spec, descr.outputs[0], threshold)
    fmt = next((f for f in TORCH_FORMATS if getattr(descr.weights, f) is not None), None)
    ops_in = _torch_ops(descr.inputs[0].preprocessing, in_axes)
    ops_out = _torch_ops(_without_final_binarize(descr.outputs[0].postprocessing), out_axes)
    why_not: str | None = None
    module: nn.Module | None = None
    if fmt is None:
        formats = [f for f, w in descr.weights if w is not None]
        why_not = (
            f"its weights ({', '.join(formats)}) are run by bioimageio.core without gradients; "
            f"white-box attacks need {' or '.join(TORCH_FORMATS)} weights"
        )
    elif isinstance(ops_in, str) or isinstance(ops_out, str):
        why_not = (
            f"its processing step {ops_in if isinstance(ops_in, str) else ops_out!r} has no "
            "differentiable form here; bioimageio.core runs it without gradients"
        )
    else:
        network = _load_network(spec, descr, fmt, device)
        module = BioimageioTorchModel(
            network, in_axes, out_axes, ops_in, ops_out, descr.inputs[0], channel_index, mapping
        ).to(device)
        mismatch = _check_against_core(module, descr, fmt, device)
        if mismatch is not None:
            logger.warning(
                "%s: the torch form does not reproduce bioimageio.core on the package's test "
                "input (%s); using bioimageio.core's pipeline",
                spec,
                mismatch,
            )
            why_not = f"its torch form did not reproduce bioimageio.core's output ({mismatch})"
            module = None
    if module is None:
        module = BioimageioPipelineModel(
            descr, in_axes, out_axes, channel_index, mapping, device, str(descr.inputs[0].id)
        )
        logger.info(
            "%s: runs through bioimageio.core's pipeline, without gradients: %s", spec, why_not
        )
    sha = sha256_file(path)
    described = (
        f"{name}, weights {fmt if why_not is None else 'via bioimageio.core'}, "
        f"output {descr.outputs[0].id!s} channel {channel_index} {mapping.describe()}"
    )
    return ModelInfo(module.eval(), described, sha, normalize="none", no_gradients=why_not)


def _declared_type(path: Path) -> str | None:
    """The ``type`` a description declares (read before it is validated, so that a dataset
    or application is named as such), or None when it cannot be read here."""
    import zipfile

    import yaml

    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as z:
                name = next((n for n in RDF_NAMES if n in z.namelist()), None)
                text = z.read(name).decode("utf-8") if name else None
        else:
            text = path.read_text(encoding="utf-8")
        content = yaml.safe_load(text) if text else None
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile, yaml.YAMLError):
        return None  # load_description reports it
    kind = content.get("type") if isinstance(content, dict) else None
    return str(kind) if kind is not None else None


# --- axes ---------------------------------------------------------------------------------


def _axis_size_one(axis: Any) -> bool:
    size = getattr(axis, "size", None)
    return isinstance(size, int) and size == 1


def _other_axis(axis: Any, kind: str, aid: str, singleton: list[str], refuse: str) -> None:
    """A non-channel axis: y and x and the batch pass; any other must be of size 1 (it is
    added to ``singleton``), else ``refuse`` (the message) is raised."""
    if (kind == "space" and aid in ("y", "x")) or kind == "batch":
        return
    if not _axis_size_one(axis):
        raise BioimageioModelError(refuse)
    singleton.append(aid)


def _input_axes(spec: str, tensor: Any) -> _Axes:
    ids, types, singleton = [], [], []
    for axis in tensor.axes:
        aid, kind = str(axis.id), str(axis.type)
        if kind == "channel":
            if len(axis.channel_names) != 1:
                raise BioimageioModelError(
                    f"--model {spec}: input {tensor.id} takes {len(axis.channel_names)} channels; "
                    "FluoroBench-C images have one"
                )
        else:
            _other_axis(
                axis,
                kind,
                aid,
                singleton,
                f"--model {spec}: input {tensor.id} has a {kind} axis {aid!r} of size "
                f"{getattr(axis, 'size', None)}; FluoroBench-C images are 2-D (y, x)",
            )
        ids.append(aid)
        types.append(kind)
    if not {"y", "x"} <= set(ids):
        raise BioimageioModelError(
            f"--model {spec}: input {tensor.id} has axes {ids}; it needs space axes y and x"
        )
    return _Axes(ids, types, singleton)


def _output_axes(spec: str, tensor: Any, channel: str | None) -> tuple[_Axes, int]:
    ids, types, singleton = [], [], []
    index = 0
    for axis in tensor.axes:
        aid, kind = str(axis.id), str(axis.type)
        if kind == "channel":
            names = [str(n) for n in axis.channel_names]
            if channel is not None:
                if channel in names:
                    index = names.index(channel)
                elif channel.isdigit() and int(channel) < len(names):
                    index = int(channel)
                else:
                    raise BioimageioModelError(
                        f"--model {spec}: output {tensor.id} has no channel {channel!r}; its "
                        f"channels are {', '.join(f'{i}: {n}' for i, n in enumerate(names))}"
                    )
            elif len(names) > 1:
                raise BioimageioModelError(
                    f"--model {spec}: output {tensor.id} has {len(names)} channels "
                    f"({', '.join(f'{i}: {n}' for i, n in enumerate(names))}); state the "
                    "foreground one with --channel"
                )
        else:
            _other_axis(
                axis,
                kind,
                aid,
                singleton,
                f"--model {spec}: output {tensor.id} has a {kind} axis {aid!r} that is not "
                "of size 1; it cannot be mapped to a 2-D mask",
            )
        ids.append(aid)
        types.append(kind)
    if not {"y", "x"} <= set(ids):
        raise BioimageioModelError(
            f"--model {spec}: output {tensor.id} has axes {ids}; a mask needs space axes y and x"
        )
    if channel is not None and "channel" not in types and channel not in ("0",):
        raise BioimageioModelError(
            f"--model {spec}: --channel {channel}: output {tensor.id} has no channel axis"
        )
    return _Axes(ids, types, singleton), index


# --- output -> mask -----------------------------------------------------------------------


@dataclass(frozen=True)
class MaskMapping:
    """How an output value becomes foreground: ``value > threshold``; ``probability``: the
    value is a probability, and its logit is returned (so attack losses see a logit)."""

    threshold: float
    probability: bool
    why: str

    def describe(self) -> str:
        return f"foreground where > {self.threshold:g} ({self.why})"

    def logits(self, value: torch.Tensor) -> torch.Tensor:

        if self.probability and 0.0 < self.threshold < 1.0:
            p = value.clamp(_P_EPS, 1.0 - _P_EPS)
            return torch.log(p) - torch.log1p(-p) - math.log(self.threshold / (1 - self.threshold))
        return value - self.threshold


def _final_op(procs: Any) -> str | None:
    steps = [str(p.id) for p in procs if str(p.id) != "ensure_dtype"]
    return steps[-1] if steps else None


def _without_final_binarize(procs: Any) -> list[Any]:
    """The postprocessing without a final ``binarize`` (its threshold is applied by the mask
    mapping instead, so the value before it keeps its gradient)."""
    procs = list(procs)
    for i in range(len(procs) - 1, -1, -1):
        if str(procs[i].id) == "binarize":
            return procs[:i] + [p for p in procs[i + 1 :] if str(p.id) != "ensure_dtype"]
        if str(procs[i].id) != "ensure_dtype":
            break
    return procs


def _mask_mapping(spec: str, tensor: Any, threshold: float | None) -> MaskMapping:
    from bioimageio.spec.model import v0_5

    final = _final_op(tensor.postprocessing)
    data = tensor.data[0] if isinstance(tensor.data, (list, tuple)) else tensor.data
    value_range = getattr(data, "range", (None, None))
    unit_range = tuple(value_range) == (0.0, 1.0) or tuple(value_range) == (0, 1)
    probability = final in ("sigmoid", "softmax") or unit_range
    if threshold is not None:
        return MaskMapping(threshold, probability, "threshold given")
    if final == "binarize":
        binarize = [p for p in tensor.postprocessing if str(p.id) == "binarize"][-1]
        value = getattr(binarize.kwargs, "threshold", None)
        if not isinstance(value, (int, float)):
            raise BioimageioModelError(
                f"--model {spec}: output {tensor.id} is binarized with a threshold per channel; "
                "state --threshold and --channel"
            )
        return MaskMapping(float(value), False, "the model's binarize threshold")
    if probability:
        why = f"a probability: {'final ' + final if final else 'declared range [0, 1]'}"
        return MaskMapping(0.5, True, why)
    if isinstance(data, v0_5.NominalOrOrdinalDataDescr):
        return MaskMapping(0.0, False, "label image: foreground where the label is > 0")
    raise BioimageioModelError(
        f"--model {spec}: output {tensor.id} cannot be mapped to a foreground mask: it is not "
        f"declared a probability (range {tuple(value_range)}, final postprocessing "
        f"{final or 'none'}) nor a binarized or label output; state --threshold (and "
        "--channel for a multi-channel output)"
    )


# --- processing in torch ------------------------------------------------------------------


def _reduce_dims(axes: _Axes, named: Any) -> list[int]:
    """Dims a statistic is taken over: the named axes (all but batch when None); the batch
    axis never, since each image is its own sample."""
    names = [str(a) for a in named] if named else [a for a in axes.ids]
    return [axes.index(a) for a in names if a in axes.ids and axes.types[axes.index(a)] != "batch"]


def _along(axes: _Axes, axis: str, values: list[float], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a tensor along ``axis`` of a tensor like ``like`` in ``axes`` layout."""
    shape = [1] * len(axes.ids)
    shape[axes.index(axis)] = len(values)
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(shape)


def _quantile(x: torch.Tensor, q: float, dims: list[int]) -> torch.Tensor:
    keep = [d for d in range(x.dim()) if d not in dims]
    moved = x.permute(*keep, *dims)
    flat = moved.reshape(*[x.shape[d] for d in keep], -1)
    value = flat.quantile(q, dim=-1, keepdim=True)
    shape = [x.shape[d] if d in keep else 1 for d in range(x.dim())]
    return value.reshape(shape)


def _zero_mean_unit_variance(x: torch.Tensor, dims: list[int], eps: float) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean) / (x.std(dim=dims, keepdim=True, correction=0) + eps)


def _affine(x: torch.Tensor, gain: Any, offset: Any) -> torch.Tensor:
    """``x * gain + offset``; each a number or a tensor broadcast along one axis."""
    return x * (gain(x) if callable(gain) else gain) + (offset(x) if callable(offset) else offset)


def _scale_range(
    x: torch.Tensor, dims: list[int], lo: float, hi: float, eps: float
) -> torch.Tensor:
    low, high = _quantile(x, lo, dims), _quantile(x, hi, dims)
    return (x - low) / (high - low + eps)


def _torch_ops(procs: Any, axes: _Axes) -> list[Any] | str:
    """The processing steps as torch functions of a tensor in ``axes`` layout (the formulas
    of ``bioimageio.core``'s operators), or the id of the first step without a torch form
    here."""
    ops: list[Any] = []
    for proc in procs:
        pid, kw = str(proc.id), getattr(proc, "kwargs", None)
        over_dataset = bool(getattr(kw, "axes", None)) and "batch" in [str(a) for a in kw.axes]
        if pid == "ensure_dtype":
            if str(kw.dtype) not in ("float32", "float64"):
                return f"ensure_dtype {kw.dtype}"
            dtype = torch.float32 if str(kw.dtype) == "float32" else torch.float64
            ops.append(functools.partial(torch.Tensor.to, dtype=dtype))
        elif pid == "zero_mean_unit_variance":
            if over_dataset:
                return "zero_mean_unit_variance over the dataset"
            dims = _reduce_dims(axes, kw.axes)
            ops.append(functools.partial(_zero_mean_unit_variance, dims=dims, eps=kw.eps))
        elif pid in ("fixed_zero_mean_unit_variance", "scale_linear"):
            if pid == "scale_linear":
                gain, offset = kw.gain, kw.offset
            else:  # (x - mean) / (std + eps), bioimageio.core's eps 1e-6
                gain = [1.0 / (sd + 1e-6) for sd in _as_list(kw.std)]
                offset = [-m * g for m, g in zip(_as_list(kw.mean), gain, strict=True)]
                if not hasattr(kw, "axis"):
                    gain, offset = gain[0], offset[0]
            if hasattr(kw, "axis"):
                axis = str(kw.axis)
                gain = functools.partial(_along, axes, axis, _as_list(gain))
                offset = functools.partial(_along, axes, axis, _as_list(offset))
            ops.append(functools.partial(_affine, gain=gain, offset=offset))
        elif pid == "scale_range":
            if kw.reference_tensor is not None or over_dataset:
                return "scale_range with a reference tensor or over the dataset"
            ops.append(
                functools.partial(
                    _scale_range,
                    dims=_reduce_dims(axes, kw.axes),
                    lo=kw.min_percentile / 100.0,
                    hi=kw.max_percentile / 100.0,
                    eps=kw.eps,
                )
            )
        elif pid == "clip":
            if getattr(kw, "min_percentile", None) is not None or (
                getattr(kw, "max_percentile", None) is not None
            ):
                return "clip at percentiles"
            ops.append(functools.partial(torch.clamp, min=kw.min, max=kw.max))
        elif pid == "sigmoid":
            ops.append(torch.sigmoid)
        elif pid == "softmax":
            ops.append(functools.partial(torch.softmax, dim=axes.index(str(kw.axis))))
        else:
            return pid
    return ops


def _as_list(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _apply(ops: list[Any], x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        x = op(x)
    return x


# --- sizes --------------------------------------------------------------------------------


def _valid_size(axis: Any, n: int, spec_id: str) -> int:
    """The smallest size >= ``n`` that the input axis accepts."""
    size = axis.size
    if isinstance(size, int):
        if size < n:
            raise BioimageioModelError(
                f"{spec_id}: the model takes a fixed {axis.id} size of {size}; the images are "
                f"{n} pixels (tiling is not supported)"
            )
        return size
    if hasattr(size, "min") and hasattr(size, "step"):
        if n <= size.min:
            return int(size.min)
        return int(size.min + math.ceil((n - size.min) / size.step) * size.step)
    return n  # a size reference: checked by the model itself


def _padded_shape(tensor: Any, h: int, w: int) -> tuple[int, int]:
    axes = {str(a.id): a for a in tensor.axes}
    return _valid_size(axes["y"], h, str(tensor.id)), _valid_size(axes["x"], w, str(tensor.id))


def _to_model_layout(x: torch.Tensor, axes: _Axes) -> torch.Tensor:
    """``(B, 1, H, W)`` -> the model's axis order (with batch) or, without a batch axis,
    ``(1, 1, H, W)`` -> the model's axis order of one image."""
    have = ["batch", "channel", "y", "x"]
    if "channel" not in axes.types:
        x, have = x[:, 0], ["batch", "y", "x"]
    if not axes.has_batch:
        x, have = x[0], have[1:]
    for aid in axes.singleton:
        x, have = x.unsqueeze(-1), [*have, aid]
    names = [
        "batch" if t == "batch" else ("channel" if t == "channel" else a)
        for a, t in zip(axes.ids, axes.types, strict=True)
    ]
    return x.permute(*[have.index(n) for n in names])


def _from_model_layout(y: torch.Tensor, axes: _Axes, channel: int) -> torch.Tensor:
    """The model's output (one image without a batch axis) -> ``(B, 1, H, W)`` of the chosen
    channel."""
    names = [
        "batch" if t == "batch" else ("channel" if t == "channel" else a)
        for a, t in zip(axes.ids, axes.types, strict=True)
    ]
    if y.dim() != len(names):
        raise BioimageioModelError(
            f"the model's output has {y.dim()} dimensions; its description declares {names}"
        )
    for aid in reversed(axes.singleton):
        i = names.index(aid)
        if y.shape[i] != 1:
            raise BioimageioModelError(f"the model's output axis {aid} has size {y.shape[i]}")
        y, names = y.squeeze(i), names[:i] + names[i + 1 :]
    if "channel" in names:
        i = names.index("channel")
        y, names = y.narrow(i, channel, 1), names
    else:
        y, names = y.unsqueeze(0), ["channel", *names]
    if "batch" not in names:
        y, names = y.unsqueeze(0), ["batch", *names]
    return y.permute(*[names.index(n) for n in ("batch", "channel", "y", "x")])


# --- the two modules ----------------------------------------------------------------------


def _load_network(spec: str, descr: Any, fmt: str, device: torch.device) -> nn.Module:

    try:
        if fmt == "pytorch_state_dict":
            from bioimageio.core.backends.pytorch_backend import load_torch_model

            network = load_torch_model(
                descr.weights.pytorch_state_dict, load_state=True, devices=[device]
            )
        else:
            network = torch.jit.load(descr.weights.torchscript.get_reader(), map_location=device)
    except Exception as exc:  # the package's architecture code or weights: say which failed
        raise BioimageioModelError(
            f"--model {spec}: loading its {fmt} weights failed ({type(exc).__name__}: {exc})"
        ) from exc
    return network.eval()


class BioimageioTorchModel(nn.Module):
    """The network with its declared processing, in torch: ``(B, 1, H, W)`` grey levels
    -> ``(B, 1, H, W)`` foreground logits; differentiable."""

    def __init__(
        self,
        network: nn.Module,
        in_axes: _Axes,
        out_axes: _Axes,
        ops_in: list[Any],
        ops_out: list[Any],
        in_tensor: Any,
        channel: int,
        mapping: MaskMapping,
    ) -> None:
        super().__init__()
        self.network = network
        self.in_axes, self.out_axes = in_axes, out_axes
        self.ops_in, self.ops_out = ops_in, ops_out
        self.in_tensor, self.channel, self.mapping = in_tensor, channel, mapping

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The postprocessed output, in the model's layout, of an input in its layout."""
        y = self.network(_apply(self.ops_in, x.float()))
        if isinstance(y, (tuple, list)):
            y = y[0]
        return _apply(self.ops_out, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not self.in_axes.has_batch:
            return torch.cat([self.forward_one(x[i : i + 1], h, w) for i in range(len(x))])
        return self.forward_one(x, h, w)

    def forward_one(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        ph, pw = _padded_shape(self.in_tensor, h, w)
        # Processing statistics are taken on the image itself, the padding added after.
        z = _to_model_layout(x, self.in_axes)
        z = _apply(self.ops_in, z.float())
        if (ph, pw) != (h, w):
            yi, xi = self.in_axes.index("y"), self.in_axes.index("x")
            z = _pad(z, yi, xi, ph - h, pw - w)
        y = self.network(z)
        if isinstance(y, (tuple, list)):
            y = y[0]
        y = _apply(self.ops_out, y)
        out = _from_model_layout(y, self.out_axes, self.channel)
        if out.shape[-2] < h or out.shape[-1] < w:
            raise BioimageioModelError(
                f"the model's output is {tuple(out.shape[-2:])} for a {(ph, pw)} input; "
                f"a mask of {(h, w)} is needed"
            )
        return self.mapping.logits(out[..., :h, :w].float())


def _pad(z: torch.Tensor, yi: int, xi: int, dh: int, dw: int) -> torch.Tensor:
    """Replicate-pad dims ``yi`` and ``xi`` of ``z`` at their end."""

    for dim, extra in ((yi, dh), (xi, dw)):
        if extra > 0:
            edge = z.narrow(dim, z.shape[dim] - 1, 1)
            z = torch.cat(
                [z, edge.expand(*[extra if d == dim else -1 for d in range(z.dim())])], dim
            )
    return z


class BioimageioPipelineModel(nn.Module):
    """``bioimageio.core``'s prediction pipeline, one image at a time (no gradients)."""

    def __init__(
        self,
        descr: Any,
        in_axes: _Axes,
        out_axes: _Axes,
        channel: int,
        mapping: MaskMapping,
        device: torch.device,
        input_id: str,
    ) -> None:
        from bioimageio.core import create_prediction_pipeline

        super().__init__()
        self.descr, self.in_axes, self.out_axes = descr, in_axes, out_axes
        self.channel, self.mapping, self.input_id = channel, mapping, input_id
        self.pipeline = create_prediction_pipeline(descr, devices=[str(device)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bioimageio.core import Sample, Tensor

        h, w = x.shape[-2:]
        ph, pw = _padded_shape(self.descr.inputs[0], h, w)
        outs = []
        for i in range(len(x)):
            one = x[i : i + 1].detach().float()
            if (ph, pw) != (h, w):  # bioimageio.core tiles large images but pads no small one
                one = _pad(one, 2, 3, ph - h, pw - w)
            arr = _to_model_layout(one, self.in_axes).cpu().numpy()
            tensor = Tensor.from_numpy(arr, dims=tuple(self.in_axes.ids))
            sample = Sample(members={self.input_id: tensor}, stat={}, id=i)
            result = self.pipeline.predict_sample_without_blocking(sample)
            member = next(iter(result.members.values()))
            data = member.data.transpose(*[a for a in self.out_axes.ids if a in member.data.dims])
            y = torch.from_numpy(np.asarray(data.values, dtype=np.float32))
            out = _from_model_layout(y, self.out_axes, self.channel)
            outs.append(self.mapping.logits(out[..., :h, :w]))
        return torch.cat(outs).to(x.device)


def _check_against_core(module: Any, descr: Any, fmt: str, device: torch.device) -> str | None:
    """None when ``module.raw`` reproduces ``bioimageio.core`` on the package's test input
    within the package's reproducibility tolerance; else what differed."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample

    tensor = descr.inputs[0]
    if tensor.test_tensor is None:
        return None
    tol = dict(DEFAULT_TOLERANCE)
    for entry in getattr(descr.config.bioimageio, "reproducibility_tolerance", ()) or ():
        if (not entry.weights_formats or fmt in entry.weights_formats) and (
            not entry.output_ids or descr.outputs[0].id in entry.output_ids
        ):
            tol = {
                "relative_tolerance": entry.relative_tolerance,
                "absolute_tolerance": entry.absolute_tolerance,
            }
    try:
        sample = get_test_input_sample(descr)
        pipeline = create_prediction_pipeline(descr, devices=[str(device)], weights_format=fmt)
        expected_member = next(
            iter(pipeline.predict_sample_without_blocking(sample).members.values())
        )
    except Exception as exc:  # bioimageio.core's own failure on the package's test input
        return f"bioimageio.core could not run the test input: {type(exc).__name__}: {exc}"
    expected = expected_member.data.transpose(*[str(a) for a in module.out_axes.ids]).values
    given = next(iter(sample.members.values())).data
    given = given.transpose(*[str(a) for a in module.in_axes.ids]).values
    with torch.no_grad():
        got = module.raw(torch.from_numpy(np.asarray(given, dtype=np.float32)).to(device))
    got = got.detach().cpu().numpy()
    if got.shape != expected.shape:
        return f"output shape {got.shape} against {expected.shape}"
    diff = np.abs(got - expected)
    bad = diff > tol["absolute_tolerance"] + tol["relative_tolerance"] * np.abs(expected)
    if bad.any():
        return f"{int(bad.sum())} of {bad.size} elements differ, at most by {float(diff.max()):.3g}"
    return None
