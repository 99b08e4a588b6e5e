"""Row features of every config: declared once, embedded in every shard and in the card's YAML.

The data contract: ``docs/definitions.md#data-contract``.
"""

from __future__ import annotations

from typing import Any

from datasets import ClassLabel, Features, Image, Value

from builder.package.plan import CORRUPTIONS

_F64 = Value("float64")
_STR = Value("string")

PSF_FEATURES: dict[str, Any] = {
    "kind": _STR,
    "sigma_px": _F64,
    "sigma_center_px": _F64,
    "sigma_edge_px": _F64,
    "rings": Value("int32"),
    "truncate": _F64,
}
ATTACK_FEATURES: dict[str, Any] = {
    "method": _STR,
    "eps_grey": _F64,
    "step_grey": _F64,
    "iterations": Value("int32"),
    "random_start": Value("bool"),
    "loss": _STR,
    "linf_grey": _F64,
    "model_sha256": _STR,
    "seed": Value("int64"),
}
#: Real-image rows: the tile's own noise, fitted (``var = noise_a x + noise_b``, grey
#: levels), its native SNR, and what the controlled corruption changed.
REAL_FEATURES: dict[str, Any] = {
    "noise_a": _F64,
    "noise_b": _F64,
    "quant_step": _F64,
    "snr_native": _F64,
    "added_scale": _F64,
    "offset": _F64,
    "noise_retained": _F64,
}
#: Everything that made a row. Fields that do not apply to a split are null.
PARAMS_FEATURES: dict[str, Any] = {
    "build_seed": Value("int64"),
    "mask_seed": Value("int64"),
    "render_seed": Value("int64"),
    "noise_seed": Value("int64"),
    "noise_model": _STR,
    "snr_target": _F64,
    "snr_measured": _F64,
    "k_e_per_unit": _F64,
    "signal_e": _F64,
    "background_e": _F64,
    "read_noise_e": _F64,
    "offset_adu": _F64,
    "e_per_adu": _F64,
    "psf": PSF_FEATURES,
    "attack": ATTACK_FEATURES,
    "real": REAL_FEATURES,
    "renderer": _STR,
    "renderer_params": _STR,  # JSON: per-structure renderer draws (texture, gamma, haze...)
    "mask_params": _STR,  # JSON: the mask generator's draws, or the real source's metadata
    "package_version": _STR,
}


#: The camera fields of ``params`` (its float64 fields, in declaration order): one value
#: per row from the noise step.
CAMERA_FIELDS: tuple[str, ...] = tuple(k for k, v in PARAMS_FEATURES.items() if v == _F64)

_CASTS: dict[str, Any] = {"float64": float, "int32": int, "int64": int, "bool": bool, "string": str}


def record(values: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """A struct value of ``fields`` (e.g. :data:`ATTACK_FEATURES`) from ``values``: every
    declared field in declaration order, cast to its declared type; absent or None -> None.
    Rows are assembled from the declarations, so a new field is added in one place."""
    out: dict[str, Any] = {}
    for key, feature in fields.items():
        value = values.get(key)
        out[key] = None if value is None else _CASTS[feature.dtype](value)
    return out


def row_features(config: str) -> Features:
    """The features of every split of ``config`` (``nucleus`` adds instance labels)."""
    feats: dict[str, Any] = {
        "image": Image(),
        "preview": Image(),  # 8-bit, percentile-scaled: for the dataset viewer, not for models
        "mask": Image(),
        "id": _STR,
        "corruption": ClassLabel(names=list(CORRUPTIONS)),
        "level": Value("float32"),
        "params": PARAMS_FEATURES,
        "source": _STR,
    }
    if config == "nucleus":
        feats["instances"] = Image()
    return Features(feats)


def empty_params() -> dict[str, Any]:
    """A params record with every field null, to be filled per split."""
    return {k: None for k in PARAMS_FEATURES}
