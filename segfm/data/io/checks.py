"""Problems of a dataset, as each format's checks find them (``segfm verify-data``).

Each data module's ``verify`` (:meth:`segfm.data.base.BaseDataModule.verify`) walks its root with
the format's own readers and records into a :class:`Report` every problem instead of stopping at
the first, as nnU-Net's dataset integrity check does. **Errors** are fatal (loading would fail,
or training would learn from wrong data); **warnings** are legal but often a mistake (a label
with background only, a constant image, a spacing outside :data:`SPACING_RANGE`, ...). This
module holds the report and the checks every format shares: arrays, spacings, NIfTI pairs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from tqdm import tqdm

from segfm.data.io.geometry import voxel_size
from segfm.data.io.nifti import Volume
from segfm.errors import DataError

Severity = Literal["error", "warning"]
#: voxel sizes in mm outside this range are warned about (a header in other units?)
SPACING_RANGE = (0.01, 50.0)
#: largest difference between the affine entries of an image and its label
AFFINE_TOLERANCE = 1e-3
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset.

    Attributes:
        severity: ``error`` (fatal) or ``warning``.
        file: The file or folder at fault.
        message: What is wrong.
        fix: What to do about it.
    """

    severity: Severity
    file: str
    message: str
    fix: str

    def __str__(self) -> str:
        text = f"{self.severity.upper()}: {self.file}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


@dataclass
class Report:
    """The problems of a dataset, as a data module's ``verify`` found them.

    Attributes:
        data: Name of the data module class.
        root: The dataset root.
        checked: Number of cases (class-folder items, npz files) read.
        problems: Every problem, in the order found.
    """

    data: str
    root: str
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """The fatal problems."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The non-fatal problems."""
        return [p for p in self.problems if p.severity == "warning"]

    def add(self, severity: Severity, file: str | Path, message: str, fix: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(severity, str(file), message, fix))

    def error(self, file: str | Path, message: str, fix: str) -> None:
        """Record a fatal problem."""
        self.add("error", file, message, fix)

    def warn(self, file: str | Path, message: str, fix: str) -> None:
        """Record a non-fatal problem."""
        self.add("warning", file, message, fix)

    def attempt(
        self, file: str | Path, read: Callable[..., T], *args: Any, also: Iterable[Path] = ()
    ) -> T | None:
        """Call a reader; record its :class:`DataError` as an error instead.

        Args:
            file: The file the reader reads.
            read: The reader.
            *args: Its arguments.
            also: Other files it reads (a label): the problem names the one the reader's
                message names first, else ``file``.

        Returns:
            What the reader returned, or ``None`` if it raised :class:`DataError`.
        """
        try:
            return read(*args)
        except DataError as e:
            text = str(e)
            named = [(text.find(str(f)), str(f)) for f in (file, *also) if str(f) in text]
            culprit = min(named)[1] if named else str(file)
            first = text.removeprefix("cannot read ").split(" ")[0].rstrip(":")
            if first.startswith(f"{file}{os.sep}"):  # a file inside the folder ``file``
                culprit = first
            unreadable = f"cannot read {culprit} "
            if text.startswith(unreadable):
                text = "cannot be read " + text[len(unreadable) :]
            for prefix in (f"{culprit}: ", f"{culprit} "):
                text = text.removeprefix(prefix)
            message, _, fix = text.rpartition("; ")
            self.error(culprit, message or fix, fix if message else "")
            return None

    def text(self) -> str:
        """The report as lines: every problem, then a summary line."""
        lines = [str(p) for p in self.problems]
        verdict = "FAILED" if self.errors else "OK"
        lines.append(
            f"{verdict}: {self.data} at {self.root}: {self.checked} cases checked, "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )
        return "\n".join(lines)


# --- checks of arrays --------------------------------------------------------------------------


def check_image(report: Report, file: Path, array: np.ndarray) -> None:
    """An image: not zero-size, finite, not constant (a warning)."""
    if array.size == 0:
        report.error(file, f"is empty (shape {array.shape})", "re-export it with its voxels")
        return
    finite = np.isfinite(array) if array.dtype.kind == "f" else np.ones(array.shape, bool)
    if not finite.all():
        report.error(
            file,
            f"holds {int((~finite).sum())} NaN or infinite values",
            "replace them (e.g. with the background intensity) and re-save it",
        )
    values = array[finite]
    if values.size and values.min() == values.max():
        report.warn(file, f"is constant ({values.flat[0]})", "check that the export is right")


def check_label(
    report: Report, file: Path, array: np.ndarray, declared: set[int] | None, source: str = ""
) -> set[int] | None:
    """A label: integer values >= 0 within ``declared`` (when known), some foreground.

    Returns:
        The values present, or ``None`` if they are not integers >= 0.
    """
    if array.size == 0:
        report.error(file, f"is empty (shape {array.shape})", "re-export it with its voxels")
        return None
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        off = array[finite][array[finite] != np.round(array[finite])]
        if not finite.all() or off.size:
            example = off.flat[0] if off.size else array[~finite].flat[0]
            report.error(
                file,
                f"holds non-integer label values (e.g. {example})",
                "store integer class ids (resample labels with nearest neighbour)",
            )
            return None
    elif array.dtype.kind not in "biu":
        report.error(file, f"has labels of type {array.dtype}", "store integer class ids")
        return None
    ids = {int(v) for v in np.unique(array)}
    if min(ids) < 0:
        negative = sorted(i for i in ids if i < 0)
        report.error(file, f"holds negative labels {negative}", "store 0 and class ids >= 1")
        return None
    if declared is not None and ids - declared - {0}:
        unknown = sorted(ids - declared - {0})
        report.error(
            file,
            f"holds label values {unknown} not declared in {source} (declared: {sorted(declared)})",
            f"declare them in {source} or remap them",
        )
    if ids == {0}:
        report.warn(
            file,
            "is empty: background only, no structure",
            "check the export; a case without structures teaches nothing",
        )
    return ids


def check_spacing(report: Report, file: Path, spacing: Iterable[float]) -> None:
    """Spacing (mm): finite and > 0 (error), within :data:`SPACING_RANGE` (warning)."""
    values = np.asarray(list(spacing), dtype=np.float64)
    low, high = SPACING_RANGE
    if not np.all(np.isfinite(values) & (values > 0)):
        report.error(file, f"has spacing {values.tolist()}", "store voxel sizes > 0 in mm")
    elif values.min() < low or values.max() > high:
        report.warn(
            file,
            f"has spacing {values.tolist()} mm, outside {low}-{high} mm",
            "check the units of the header (mm expected)",
        )


def check_nifti_spacing(report: Report, file: Path, volume: Volume) -> None:
    """A NIfTI's voxel sizes: sane, and the header's ``pixdim`` those of its affine."""
    check_spacing(report, file, volume.spacing)
    header, grid = np.asarray(volume.spacing), voxel_size(volume.affine)
    if not np.allclose(header, grid, rtol=1e-3, atol=1e-4):
        report.error(
            file,
            f"has voxel sizes {header.tolist()} in its header (pixdim) but "
            f"{np.round(grid, 4).tolist()} in its affine (z, y, x); a zero pixdim is read as 1",
            "re-save it with pixdim equal to the affine's voxel sizes",
        )


def check_pair(report: Report, label_file: Path, label: Volume, image: Volume, of: Path) -> bool:
    """A NIfTI label and its image: same shape and affine."""
    if label.array.shape != image.array.shape:
        report.error(
            label_file,
            f"has shape {label.array.shape} (z, y, x) but its image {of} has {image.array.shape}",
            "export the label on the image's grid",
        )
        return False
    difference = float(np.abs(label.affine - image.affine).max())
    if difference > AFFINE_TOLERANCE:
        report.error(
            label_file,
            f"has another affine than its image {of} (largest difference {difference:.3g})",
            "give the label the image's origin, spacing and direction, or resample it onto it",
        )
        return False
    return True


# --- files and folders -------------------------------------------------------------------------


def visible_files(folder: Path, ending: str) -> dict[str, Path]:
    """Visible files of ``folder`` ending with ``ending``, by name without it."""
    if not folder.is_dir():
        return {}
    return {
        p.name[: -len(ending)]: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(ending) and not p.name.startswith(".")
    }


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def progress(items: list[T], max_cases: int | None, what: str) -> Iterable[T]:
    """The first ``max_cases`` items with a progress bar (on a terminal)."""
    return tqdm(items[:max_cases], desc=f"verifying {what}", unit="case", disable=None)


def report_unpaired(
    report: Report, found: dict[str, Path], other: dict[str, Path], kind: str
) -> None:
    """Errors for the files of ``found`` without a partner in ``other``."""
    for name in sorted(set(found) - set(other)):
        report.error(found[name], f"has no {kind}", f"add its {kind} or remove the file")
