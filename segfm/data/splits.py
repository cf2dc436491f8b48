"""Train / val / test splits of case ids, shared by the data modules.

Splits are always made over *cases*, never over slices or patches: neighbouring slices of one
volume are nearly identical, so a slice-level split puts copies of training data into validation
and test (MedSAM's Ascend port does exactly that and reports inflated scores).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segfm.data.io.json_file import read_json
from segfm.errors import DataError

SPLITS = ("train", "val", "test")


def _count(fraction: float, total: int) -> int:
    """Cases for a fraction of ``total``: rounded, but at least one if the fraction is > 0."""
    return 0 if fraction == 0 else max(1, round(fraction * total))


def split_cases(
    cases: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Split case ids at random, reproducibly.

    Args:
        cases: Case ids (order does not matter).
        val_fraction: Share of validation cases; at least one case if > 0.
        test_fraction: Share of test cases; at least one case if > 0.
        seed: Seed of the permutation.

    Returns:
        ``train``, ``val`` and ``test`` lists of sorted case ids, disjoint.

    Raises:
        DataError: If no case is left for training.
    """
    ordered = sorted(set(cases))
    order = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    n_test, n_val = _count(test_fraction, len(order)), _count(val_fraction, len(order))
    if n_test + n_val >= len(order):
        msg = (
            f"{len(order)} cases leave none for training with val_fraction {val_fraction} and "
            f"test_fraction {test_fraction}; lower them or give a split_file"
        )
        raise DataError(msg)
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def read_split_file(path: str | os.PathLike[str], cases: Sequence[str]) -> dict[str, list[str]]:
    """Read a split file ``{"train": [...], "val": [...], "test": [...]}`` of case ids.

    Args:
        path: The JSON file; missing keys are empty splits.
        cases: The case ids the dataset holds.

    Returns:
        ``train``, ``val`` and ``test`` lists of case ids.

    Raises:
        DataError: If the file is unreadable, has other keys, names an unknown case, or puts a
            case in two splits.
    """
    path = Path(path)
    content = read_json(path, 'write it as JSON {"train": [case ids], "val": [...], "test": [...]}')
    if set(content) - set(SPLITS):
        msg = f"{path} must be a JSON object with only the keys {list(SPLITS)}"
        raise DataError(msg)
    known, seen = set(cases), {}
    splits = {split: [str(c) for c in content.get(split, [])] for split in SPLITS}
    for split, ids in splits.items():
        for case in ids:
            if case not in known:
                example = f" (e.g. {sorted(known)[0]!r})" if known else ""
                msg = f"{path} lists {case!r} in '{split}' but the data has no such case{example}"
                raise DataError(msg)
            if seen.setdefault(case, split) != split or ids.count(case) > 1:
                msg = f"{path} lists {case!r} twice ('{seen[case]}' and '{split}'); keep one"
                raise DataError(msg)
    return splits
