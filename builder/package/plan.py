"""The split plan: which splits exist, what family each belongs to and how each is made.

Split names, families and levels come from the tables in :mod:`synthesis.levels`, so the
plan, the corruption code and the dataset card cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from synthesis.levels import (
    ATTACK_EPSILONS_GREY,
    ATTACKS,
    BLUR_LEVELS,
    REFERENCE_SNR,
    SNR_LEVELS,
)
from synthesis.runtime.errors import InputError

#: Values of the ``corruption`` ClassLabel, in label order.
CORRUPTIONS: tuple[str, ...] = ("clean", "snr", "sib", "svb", "fgsm", "ifgsm", "pgd", "real")
BASE_SPLITS: tuple[str, ...] = ("train", "validation", "test")
FAMILIES: tuple[str, ...] = (
    "reference",
    "clean",
    "snr",
    "sib",
    "svb",
    "attacks",
    "real",
    "real_snr",
    "real_sib",
    "real_svb",
)
#: Families made from the real images of a source (only with a source that has them).
REAL_FAMILIES: tuple[str, ...] = ("real", "real_snr", "real_sib", "real_svb")


@dataclass(frozen=True)
class SplitSpec:
    """How one split is made from the base images of ``base`` (train, validation or test)."""

    name: str
    family: str
    corruption: str
    level: float
    base: str
    alias_of: str | None = None  # the split shares the files of another (snr_8 -> test)

    @property
    def needs_model(self) -> bool:
        return self.family == "attacks"

    @property
    def from_real_images(self) -> bool:
        """Made from the source's real test images (``real`` and its controlled corruptions)."""
        return self.family in REAL_FAMILIES


def all_splits(with_real: bool = False) -> list[SplitSpec]:
    """Every split of a config, in build order (attacks last: they need the trained model)."""
    specs = [SplitSpec(s, "reference", "snr", REFERENCE_SNR, s) for s in BASE_SPLITS]
    specs.append(SplitSpec("clean", "clean", "clean", 0.0, "test"))
    for snr in SNR_LEVELS:
        name = f"snr_{snr}"
        alias = "test" if float(snr) == REFERENCE_SNR else None
        specs.append(SplitSpec(name, "snr", "snr", float(snr), "test", alias_of=alias))
    for family in ("sib", "svb"):
        specs += [
            SplitSpec(f"{family}_{lv}", family, family, float(lv), "test") for lv in BLUR_LEVELS
        ]
    for method in ATTACKS:
        specs += [
            SplitSpec(f"{method}_{eps}", "attacks", method, float(eps), "test")
            for eps in ATTACK_EPSILONS_GREY
        ]
    if with_real:
        specs.append(SplitSpec("real", "real", "real", 0.0, "test"))
        # The real test tiles with one factor changed (docs/definitions.md#real-image-splits).
        specs += [
            SplitSpec(f"real_snr_{snr}", "real_snr", "snr", float(snr), "test")
            for snr in SNR_LEVELS
        ]
        for family in ("sib", "svb"):
            specs += [
                SplitSpec(f"real_{family}_{lv}", f"real_{family}", family, float(lv), "test")
                for lv in BLUR_LEVELS
            ]
    return specs


SPLITS: dict[str, SplitSpec] = {s.name: s for s in all_splits(with_real=True)}


def resolve_splits(requested: list[str] | None, *, with_real: bool) -> list[SplitSpec]:
    """Expand split names and family names into the ordered list of splits to build.

    Splits that others depend on are added: ``snr_8`` brings ``test``; attack splits bring
    ``train``, ``validation`` and ``test`` (the reference model is trained on them).

    Raises:
        InputError: an unknown split or family name.
    """
    available = all_splits(with_real=with_real)
    if not requested:
        return available
    wanted: set[str] = set()
    for item in requested:
        if item in FAMILIES:
            wanted |= {s.name for s in available if s.family == item}
            if item in REAL_FAMILIES and not with_real:
                raise InputError(
                    f"split family {item!r} needs a source with real images. "
                    "Got --source procedural"
                )
        elif item in SPLITS:
            if SPLITS[item].from_real_images and not with_real:
                raise InputError(
                    f"split {item!r} needs a source with real images. Got --source procedural"
                )
            wanted.add(item)
        else:
            names = ", ".join(FAMILIES + tuple(SPLITS))
            raise InputError(f"unknown split or family {item!r}; expected one of: {names}")
    specs = [s for s in available if s.name in wanted]
    if any(s.alias_of for s in specs):
        wanted.add("test")
    if any(s.needs_model for s in specs):
        wanted |= set(BASE_SPLITS)
    return [s for s in available if s.name in wanted]
