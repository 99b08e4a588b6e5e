"""What every sub-command shares: the parser class, argument types, shared options and the
one progress-bar factory. Only the command line prints or draws bars."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from synthesis.levels import CONFIGS
from synthesis.runtime.device import DEVICE_PATTERN


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (an option whose default is "not given" says in its
    help what happens then); keeps the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


class Parser(argparse.ArgumentParser):
    """One-line errors, exit code 2, defaults shown in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def counts(value: str) -> int:
    """A whole number >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number. Got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1. Got {n}")
    return n


def device(value: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (availability is checked when the job starts)."""
    if not DEVICE_PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N. Got {value!r}")
    return value


class ListAction(argparse.Action):
    """A list option that takes ``a b``, ``a,b`` or both (``a,b c``)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("nargs", "+")
        super().__init__(*args, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = [part for value in values for part in value.split(",") if part]
        if not items:
            parser.error(f"{option_string}: expected one or more names. Got none")
        setattr(namespace, self.dest, items)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        type=device,
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )


def add_config(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:  # names are checked by the library (one message for CLI and API callers)
        p.add_argument(
            "--config",
            action=ListAction,
            default=list(CONFIGS),
            metavar="NAME",
            help=f"configs ({', '.join(CONFIGS)}), e.g. 'mito nucleus' or 'mito,nucleus'",
        )
    else:
        p.add_argument("--config", required=True, choices=list(CONFIGS), help="the config")


def add_splits(p: argparse.ArgumentParser, what: str) -> None:
    """``--splits``: names as ``a b`` or ``a,b`` (checked by the library, which knows them)."""
    p.add_argument("--splits", action=ListAction, default=None, metavar="NAME", help=what)


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")


def progress(total: int | None, desc: str, unit: str = "img") -> Any:
    """The command line's progress bar (tqdm on stderr): the one factory every command
    passes to library code (:class:`synthesis.runtime.progress.ProgressFactory`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def add_source_pixel_size(p: argparse.ArgumentParser) -> None:
    """``--source-pixel-size STEM=UM`` (repeatable) or ``UM`` (every image): the pixel size of
    an images-only source's images, overriding their metadata."""
    p.add_argument(
        "--source-pixel-size",
        action="append",
        default=None,
        metavar="STEM=UM",
        help="µm per pixel of a source image (file stem), or one UM for every image; "
        "repeatable; overrides the TIFF's metadata. An image whose pixel size is known is "
        "resampled to the config's stated one (mito: 0.085 µm) before pseudo-masking",
    )


def source_pixel_sizes(values: list[str] | None) -> dict[str, float]:
    """The ``{stem or "*": µm}`` of ``--source-pixel-size`` values (bad ones raise
    :class:`~synthesis.runtime.errors.InputError` naming the value)."""
    from synthesis.groundtruth.sources.pixel_size import parse_pixel_sizes

    return parse_pixel_sizes(values)
