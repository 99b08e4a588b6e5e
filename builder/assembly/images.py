"""The images and rows of one config: masks from the source, the renderer, the camera, blur
and attacks, assembled into rows as :mod:`builder.package.features` declares them.

Reproducibility: every random draw of a row is seeded from ``(seed, config, id, purpose)``
(:func:`synthesis.rng.derive_seed`) and uses counter-based random numbers, so a row's bytes
depend neither on the batch size nor on which other rows are built. The noise seed of an id
is the same in every split (common random numbers): two splits of one id differ only by the
factor the split varies. Definitions: ``docs/definitions.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from builder import __version__
from builder.assembly.options import BuildOptions
from builder.package.features import (
    ATTACK_FEATURES,
    CAMERA_FIELDS,
    PSF_FEATURES,
    REAL_FEATURES,
    empty_params,
    record,
    row_features,
)
from builder.package.plan import CORRUPTIONS, SplitSpec, resolve_splits
from builder.package.shards import encode_mask, encode_preview, encode_tiff, image_cell
from synthesis.levels import REFERENCE_SNR, TRAIN_SNR, Camera
from synthesis.rng import derive_seed
from synthesis.runtime.errors import InputError

#: Clean test images are kept in memory across splits below this many bytes.
_CACHE_BYTES = 1 << 30


def batched(seq: list[str], n: int) -> Iterator[list[str]]:
    """``seq`` in consecutive chunks of at most ``n``."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class ConfigImages:
    """The images and rows of one config: source, renderer, camera, blur and attacks.

    Makes rows; never writes a file. ``reference_model`` gives the model the attack splits
    are made against (the pipeline trains or loads it).
    """

    def __init__(
        self,
        opts: BuildOptions,
        config: str,
        device: torch.device,
        reference_model: Callable[[], tuple[torch.nn.Module, str]] | None = None,
    ) -> None:
        from synthesis.groundtruth.sources import open_source

        self.opts = opts
        self.config = config
        self.device = device
        self.camera = Camera()
        self.features = row_features(config)
        self.source = open_source(
            opts.source,
            config,
            seed=opts.seed,
            counts=opts.counts,
            mito_masks=opts.mito_masks if config == "mito" else "worms",
            pixel_sizes=opts.source_pixel_size or None,
        )
        self.specs = resolve_splits(opts.splits, with_real=self.source.has_real_images)
        self._clean_cache: dict[str, Any] = {}
        self._real_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fit_cache: dict[str, Any] = {}
        self._attacks: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        self.reference_model = reference_model
        self.renderer = self._make_renderer()

    # ----------------------------------------------------------------- images
    def _make_renderer(self) -> Callable[..., Any]:
        if self.opts.renderer == "physics":
            from synthesis.render.physics import render

            return render
        if self.opts.renderer == "naive":
            from synthesis.render.naive import render as naive

            return naive
        from synthesis.render.gan import GanRenderer

        # --weights DIR (from train-synthesizer): BuildOptions.validate requires it.
        try:
            return GanRenderer.from_weights(self.opts.weights, self.config, self.device)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"--renderer gan: {exc}") from None

    def _seed_values(self, ids: list[str], purpose: str) -> list[int]:
        return [derive_seed(self.opts.seed, self.config, i, purpose) for i in ids]

    def _seeds(self, ids: list[str], purpose: str) -> torch.Tensor:
        vals = self._seed_values(ids, purpose)
        return torch.tensor(vals, dtype=torch.int64, device=self.device)

    def _clean(
        self, spec: SplitSpec, ids: list[str]
    ) -> tuple[list[Any], list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        """(items, renderer params, mask (B,1,H,W) bool, clean (B,1,H,W) float32) of ``ids``.

        Test images are cached: most splits are made from them.
        """
        key = "\n".join(ids)
        if key in self._clean_cache:
            return self._clean_cache[key]
        items = self.source.load(ids)
        mask = torch.from_numpy(np.stack([it.mask for it in items]))[:, None].to(self.device) != 0
        instances = None
        if all(it.instances is not None for it in items):
            inst = np.stack([it.instances.astype(np.int32) for it in items])
            instances = torch.from_numpy(inst)[:, None].to(self.device)
        result = self.renderer(mask, self._seeds(ids, "render"), self.config, instances=instances)
        value = (items, result.params, mask, result.image)
        if spec.base == "test" and mask.numel() * 4 * len(self._clean_cache) < _CACHE_BYTES:
            self._clean_cache[key] = value
        return value

    def _camera(
        self,
        clean: torch.Tensor,
        mask: torch.Tensor,
        seeds: torch.Tensor,
        snr: float,
        optics: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Noisy ADU images of ``optics`` (default: ``clean``) with the exposure that gives
        ``clean`` the target ``snr``: blur changes the optics, not the exposure (k). The
        measured SNR is the camera equation on the stored image and the mask, so for blurred
        splits it is below the target (blur lowers the foreground contrast)."""
        from synthesis.corruptions.noise import camera_images

        res = camera_images(
            clean, mask, snr, seeds, camera=self.camera, model=self.opts.noise_model, optics=optics
        )
        return res.adu, res.params

    def target_snr(self, spec: SplitSpec, ids: list[str]) -> float | torch.Tensor:
        """The target SNR of the rows of ``ids`` in ``spec``: ``K`` for ``snr_K``; for
        ``train`` and ``validation`` one draw per row, log-uniform in the config's
        :data:`~synthesis.levels.TRAIN_SNR` range (seeded by the id: the same in every
        build); the reference SNR for every other split."""
        if spec.family == "reference" and spec.base in ("train", "validation"):
            lo, hi = TRAIN_SNR[self.config]
            if lo == hi:
                return float(lo)
            from synthesis import rng
            from synthesis.rng import streams

            u = rng.uniform(self._seeds(ids, "train_snr"), (1,), streams.TRAIN_SNR)[:, 0]
            return (lo * (hi / lo) ** u.double()).float()
        return spec.level if spec.corruption == "snr" else REFERENCE_SNR

    def reference_images(self, base: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ADU int32, mask bool), both (N, 1, H, W), of a base split at the reference SNR:
        the same images as that split's shards."""
        spec = SplitSpec(base, "reference", "snr", REFERENCE_SNR, base)
        adus, masks = [], []
        for batch in batched(self.source.ids(base), self.opts.batch_size):
            _, _, mask, clean = self._clean(spec, batch)
            snr = self.target_snr(spec, batch)
            adu, _ = self._camera(clean, mask, self._seeds(batch, "noise"), snr)
            adus.append(adu)
            masks.append(mask)
        return torch.cat(adus), torch.cat(masks)

    def rows(self, spec: SplitSpec, ids: list[str]) -> list[dict[str, Any]]:
        """The rows of ``ids`` in split ``spec``, every field as the features declare it."""
        items, render_params, mask, clean = self._clean(spec, ids)
        noise_seed_values = self._seed_values(ids, "noise")
        noise_seeds = torch.tensor(noise_seed_values, dtype=torch.int64, device=self.device)
        per_row: list[dict[str, Any]] = [empty_params() for _ in ids]
        levels = [spec.level] * len(ids)
        image_np: np.ndarray
        if spec.from_real_images:
            image_np = self._real(spec, ids, items, mask, per_row)
        elif spec.family == "clean":
            image_np = clean[:, 0].float().cpu().numpy()
        else:
            psf: dict[str, Any] = {"kind": "none"}
            optics = None
            if spec.family in ("sib", "svb"):
                from synthesis.corruptions import psf as psf_mod

                blur = psf_mod.sib if spec.family == "sib" else psf_mod.svb
                optics = blur(clean, int(spec.level))
                kind = "gaussian" if spec.family == "sib" else "space_variant_gaussian"
                psf = psf_mod.psf_params(kind, int(spec.level))
            snr = self.target_snr(spec, ids)
            adu, noise = self._camera(clean, mask, noise_seeds, snr, optics)
            if isinstance(snr, torch.Tensor):  # one SNR per row: the row's level is its SNR
                levels = [float(v) for v in noise["snr_target"].tolist()]
            if spec.family == "attacks":
                adu, attack_rows = self._attack(spec, ids, adu, mask)
                for p, a in zip(per_row, attack_rows, strict=True):
                    p["attack"] = a
            # Each field to the host once (not one element, and synchronisation, per row).
            camera = {key: noise[key].tolist() for key in CAMERA_FIELDS}
            for i, p in enumerate(per_row):
                for key in CAMERA_FIELDS:
                    p[key] = float(camera[key][i])
                p["noise_model"] = self.opts.noise_model
                p["noise_seed"] = noise_seed_values[i]
                p["psf"] = record(psf, PSF_FEATURES)
            image_np = adu[:, 0].cpu().numpy().astype(np.uint16)
        mask_np = mask[:, 0].cpu().numpy().astype(np.uint8)
        rows = []
        label = CORRUPTIONS.index(spec.corruption)
        cells = self._cells(image_np, mask_np, items)
        for i, (item, rid) in enumerate(zip(items, ids, strict=True)):
            p = per_row[i]
            p["build_seed"] = self.opts.seed
            p["mask_seed"] = item.meta.get("mask_seed")
            p["render_seed"] = derive_seed(self.opts.seed, self.config, rid, "render")
            p["renderer"] = None if spec.from_real_images else self.opts.renderer
            p["renderer_params"] = json.dumps(render_params[i], sort_keys=True)
            p["mask_params"] = json.dumps(item.meta, sort_keys=True, default=str)
            p["package_version"] = __version__
            row = {
                "image": cells[i]["image"],
                "preview": cells[i]["preview"],
                "mask": cells[i]["mask"],
                "id": rid,
                "corruption": label,
                "level": levels[i],
                "params": p,
                "source": item.source,
            }
            if "instances" in cells[i]:
                row["instances"] = cells[i]["instances"]
            rows.append(row)
        return rows

    def _cells(
        self, image_np: np.ndarray, mask_np: np.ndarray, items: list[Any]
    ) -> list[dict[str, Any]]:
        """The image cells of each row (``image``, ``preview``, ``mask`` and, where the
        features have it, ``instances``), encoded on as many threads as torch has.

        The encoders (zstd TIFF, JPEG, PNG) are pure functions of one image that release the
        GIL, so the cells are the same bytes on any number of threads; encoding one row after
        the other took ~40-65 % of a blurred row's time on CPU (``benchmarks/gpu.py``'s row
        assembly), and would bound a build whose images a GPU makes.
        """
        with_instances = "instances" in self.features

        def one(i: int) -> dict[str, Any]:
            out = {
                "image": image_cell(encode_tiff(image_np[i])),
                "preview": image_cell(encode_preview(image_np[i])),
                "mask": image_cell(encode_mask(mask_np[i])),
            }
            if with_instances:
                inst = items[i].instances
                out["instances"] = (
                    image_cell(encode_tiff(inst.astype(np.uint16))) if inst is not None else None
                )
            return out

        threads = min(len(items), torch.get_num_threads())
        if threads <= 1:
            return [one(i) for i in range(len(items))]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(one, range(len(items))))

    # ----------------------------------------------------------------- real images
    def split_ids(self, spec: SplitSpec) -> tuple[list[str], int]:
        """The ids of split ``spec`` and how many of its base's ids it leaves out: a
        ``real_snr`` split keeps the tiles whose native noise leaves room for its target
        (docs/definitions.md#real-image-splits); every other split keeps all."""
        ids = self.source.ids(spec.base)
        if spec.family != "real_snr":
            return ids, 0
        from synthesis.corruptions.real import reachable

        kept = []
        for rid in ids:
            x, m = self._real_tile(rid)
            if bool(reachable(x, m, self._native_fit(rid), spec.level)[0]):
                kept.append(rid)
        return kept, len(ids) - len(kept)

    def native_snr_of(self, ids: list[str]) -> dict[str, float]:
        """Native SNR (the tile's own noise, on its mask) of real tiles, by id."""
        from synthesis.corruptions.real import native_snr

        out = {}
        for rid in ids:
            x, m = self._real_tile(rid)
            out[rid] = float(native_snr(x, m, self._native_fit(rid))[0])
        return out

    def _real_tile(self, rid: str, item: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image float64, mask bool), ``(1, 1, H, W)``, of one real tile (cached; read from
        the source only when no loaded ``item`` is given)."""
        if rid not in self._real_cache:
            if item is None:
                (item,) = self.source.load([rid])
            x = torch.from_numpy(item.image.astype(np.float64))[None, None]
            m = torch.from_numpy(np.asarray(item.mask) != 0)[None, None]
            self._real_cache[rid] = (x, m)
        return self._real_cache[rid]

    def _native_fit(self, rid: str) -> Any:
        """The tile's own noise model, fitted on that tile alone (so it does not depend on
        the batch), cached by id."""
        if rid not in self._fit_cache:
            from synthesis.corruptions.real import estimate_noise

            x, m = self._real_tile(rid)
            self._fit_cache[rid] = estimate_noise(x, m, quant_step=1.0)
        return self._fit_cache[rid]

    def _real(
        self,
        spec: SplitSpec,
        ids: list[str],
        items: list[Any],
        mask: torch.Tensor,
        per_row: list[dict[str, Any]],
    ) -> np.ndarray:
        """Images (uint16 ``(B, H, W)``) of a split made from real tiles, filling each row's
        ``params.real`` (and, for the corrupted ones, SNR, PSF and seed)."""
        from synthesis.corruptions import psf as psf_mod
        from synthesis.corruptions import real

        purpose = "real-noise" if spec.family == "real_snr" else "real-blur-noise"
        images = []
        for i, rid in enumerate(ids):
            x, m = self._real_tile(rid, items[i])
            fit = self._native_fit(rid)
            snr_native = float(real.native_snr(x, m, fit)[0])
            values: dict[str, Any] = {
                "noise_a": float(fit.a[0]),
                "noise_b": float(fit.b[0]),
                "quant_step": float(fit.quant_step[0]),
                "snr_native": snr_native,
            }
            p = per_row[i]
            out = x
            if spec.family != "real":
                seed = derive_seed(self.opts.seed, self.config, rid, purpose)
                seeds = torch.tensor([seed], dtype=torch.int64)
                p["noise_seed"] = seed
                if spec.family == "real_snr":
                    out, rp = real.add_noise_to_snr(x, m, fit, spec.level, seeds)
                    if not bool(rp["kept"][0]):
                        raise RuntimeError(
                            f"{rid}: native SNR {snr_native:.2f} cannot reach {spec.level}"
                        )
                    values["added_scale"] = float(rp["added_scale"][0])
                    values["offset"] = float(rp["offset"][0])
                    p["snr_target"] = float(spec.level)
                    p["snr_measured"] = float(rp["snr_measured"][0])
                    p["psf"] = record({"kind": "none"}, PSF_FEATURES)
                else:
                    kind = "gaussian" if spec.corruption == "sib" else "space_variant_gaussian"
                    out, rp = real.blur_real(x, fit, spec.corruption, int(spec.level), seeds)
                    values["noise_retained"] = float(rp["noise_retained"][0])
                    p["snr_measured"] = float(real.native_snr(out, m, fit)[0])
                    p["psf"] = record(psf_mod.psf_params(kind, int(spec.level)), PSF_FEATURES)
            p["real"] = record(values, REAL_FEATURES)
            images.append(out[0, 0].numpy())
        return np.stack(images).astype(np.uint16)

    # ----------------------------------------------------------------- attacks
    def _attack(
        self, spec: SplitSpec, ids: list[str], adu: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Attacked images and attack records of ``ids`` in ``spec``. Every budget of the
        split's method is attacked at once (:func:`attack_budgets` shares their common
        gradient steps) and kept until its split asks for these ids: the build makes a
        method's splits together (:func:`attack_group`)."""
        from synthesis.corruptions.attacks import attack_budgets

        if self.reference_model is None:
            raise RuntimeError("attack splits need a reference_model provider")
        key = (spec.corruption, tuple(ids))
        if key not in self._attacks:
            model, sha = self.reference_model()
            group = self.attack_group(spec)
            results = attack_budgets(
                model,
                adu,
                mask,
                method=spec.corruption,
                budgets=[s.level for s in group],
                seeds=[self._seeds(ids, f"attack/{s.name}") for s in group],
            )
            self._attacks[key] = {
                s.name: (result.adu, self._attack_records(s, ids, result, sha))
                for s, result in zip(group, results, strict=True)
            }
        made = self._attacks[key]
        out = made.pop(spec.name)
        if not made:
            del self._attacks[key]
        return out

    def attack_group(self, spec: SplitSpec) -> list[SplitSpec]:
        """The attack splits of this build with the method of ``spec``, in build order."""
        return [s for s in self.specs if s.family == "attacks" and s.corruption == spec.corruption]

    def _attack_records(
        self, spec: SplitSpec, ids: list[str], result: Any, sha: str
    ) -> list[dict[str, Any]]:
        linf = result.linf_grey.tolist()  # to the host once, not per row
        return [
            record(
                {
                    **result.params,
                    "linf_grey": float(linf[i]),
                    "model_sha256": sha,
                    "seed": derive_seed(self.opts.seed, self.config, rid, f"attack/{spec.name}"),
                },
                ATTACK_FEATURES,
            )
            for i, rid in enumerate(ids)
        ]
