"""The benchmark's tables: configs, severity levels, camera and attack protocol, defined once.

The builder's split plan, the corruption functions, the loader and the dataset card all read
these tables, keyed by the names the dataset uses (``mito``, ``snr_2``, ``sib_3``, ``pgd_8``...).
No torch here: the package side reads them too. Definitions:
``docs/definitions.md`` (sections Units and camera, SNR, Blur, Attacks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = [
    "ATTACKS",
    "CONFIGS",
    "CONFIG_TITLES",
    "PIXEL_SIZE_UM",
    "ATTACK_EPSILONS_GREY",
    "BLUR_LEVELS",
    "REFERENCE_SNR",
    "SIB_SIGMA_PX",
    "SNR_LEVELS",
    "SVB",
    "TRAIN_SNR",
    "AttackProtocol",
    "Camera",
    "SVBSettings",
]

#: The dataset's configs, one per structure, in the order they are built and listed.
CONFIGS: tuple[str, ...] = ("er", "mito", "nucleus")
CONFIG_TITLES: dict[str, str] = {
    "er": "ER-C (endoplasmic reticulum)",
    "mito": "Mito-C (mitochondria)",
    "nucleus": "Nucleus-C (cell nuclei)",
}

#: Stated pixel size (um per pixel) of a config's procedural images, where one is stated.
#: Mito-C: 0.085 um/px, the scale its tubules (3-7 px, median ~4.5 px: 0.25-0.6 um) imply
#: against the real NAO field of ``shared/data/mito-fluorescence`` (0.0425 um/px stated,
#: tubules ~0.38 um); real images are resampled to it before they are compared
#: (docs/definitions.md#mask-generators). ER-C and Nucleus-C state none.
PIXEL_SIZE_UM: dict[str, float] = {"mito": 0.085}

#: Signal-to-noise ratios of the ``snr_*`` splits (camera equation on the mask foreground).
SNR_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5, 8)
#: The reference ("clean") condition models are trained and compared on.
REFERENCE_SNR: float = 8.0
#: SNR range of the ``train`` and ``validation`` rows, per config: each row's SNR is drawn
#: log-uniformly in it (docs/definitions.md#reference-condition); ``test`` and every split
#: made from it keep :data:`REFERENCE_SNR`. A range starts at the reference SNR, so the
#: reference condition is inside what the reference model trains on. Nucleus: up to the 95th
#: percentile of the native SNR of the BBBC038 train tiles, fitted by code
#: (``synthesis.render.fit.fit_train_snr``, ``benchmarks/fit_renderer.py``): trained at SNR 8
#: alone, U-Nets learned the noise as a cue and lost nuclei in clean real tiles
#: (benchmarks/RESULTS.md, "Fidelity over seeds"). Mito: the same fit on the train tiles of
#: the shared real mitochondria at Mito-C's pixel size, against their pseudo-masks
#: (``benchmarks/fit_renderer.py --config mito``). ER has no real image to fit on and stays at
#: the reference SNR.
TRAIN_SNR: dict[str, tuple[float, float]] = {
    "er": (REFERENCE_SNR, REFERENCE_SNR),
    "mito": (REFERENCE_SNR, 1816.0),
    "nucleus": (REFERENCE_SNR, 75.0),
}
#: Blur severities of the ``sib_*`` and ``svb_*`` splits.
BLUR_LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Gaussian PSF standard deviation (pixels) of each space-invariant blur level.
SIB_SIGMA_PX: dict[int, float] = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}


@dataclass(frozen=True)
class SVBSettings:
    """Space-variant blur: ``sigma(r) = center + (sigma_L - center) (r / r_max)^2``.

    ``sigma_L`` is the SIB sigma of the level; ``rings`` is the number K of radial basis
    functions of the flux-preserving decomposition ``sum_k h_k * (w_k x)``.
    """

    sigma_center_px: float = 0.5
    rings: int = 6


SVB = SVBSettings()


@dataclass(frozen=True)
class Camera:
    """A scientific camera at high gain (no EM excess noise modelled).

    ``e_per_adu`` = 0.1 makes a reference (SNR 8) image span well over 1000 ADU, so rounding
    to integers adds only ``e_per_adu**2 / 12`` e-^2 of variance and one grey level of an attack
    budget is several ADU.
    """

    read_noise_e: float = 1.5
    offset_adu: float = 100.0
    e_per_adu: float = 0.1
    adc_max_adu: int = 65535

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def for_snr(self, snr: float) -> Camera:
        """This camera with its gain (e-/ADU) multiplied by ``max(1, (snr / REFERENCE_SNR)^2)``.

        The photo-electrons of an image grow with the square of its SNR, so at the fixed gain
        an image at SNR 40 would begin to saturate the ADC; with the scaled gain it spans the
        ADU range of one at the reference SNR. At or below the reference SNR it is this
        camera, so those images are unchanged.

        Example:
            >>> Camera().for_snr(8.0) == Camera(), Camera().for_snr(16.0).e_per_adu
            (True, 0.4)
        """
        scale = max(1.0, (snr / REFERENCE_SNR) ** 2)
        return self if scale == 1.0 else replace(self, e_per_adu=self.e_per_adu * scale)


#: Attack budgets, in grey levels of the min-max normalised image on an 8-bit scale.
ATTACK_EPSILONS_GREY: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class AttackProtocol:
    """How an L-inf attack is run at budget ``eps`` (grey levels), after the authors' code."""

    name: str
    step_grey: float | None  # None: one step of size eps (FGSM)
    random_start: bool

    def iterations(self, eps_grey: float) -> int:
        if self.name == "fgsm":
            return 1
        if self.name == "ifgsm":  # Kurakin et al. 2017: min(eps + 4, 1.25 eps), integer part
            return max(1, int(min(eps_grey + 4, 1.25 * eps_grey)))
        return 10

    def step(self, eps_grey: float) -> float:
        return float(eps_grey) if self.step_grey is None else self.step_grey


ATTACKS: dict[str, AttackProtocol] = {
    "fgsm": AttackProtocol("fgsm", step_grey=None, random_start=False),
    "ifgsm": AttackProtocol("ifgsm", step_grey=1.0, random_start=False),
    "pgd": AttackProtocol("pgd", step_grey=2.0, random_start=True),
}
