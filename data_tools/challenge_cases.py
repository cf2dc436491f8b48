"""Split the evaluation cases of an npz root into the folders the challenge's scripts read.

``python -m data_tools.challenge_cases --root DIR --output OUT`` reads every
``<DATASET>/test/<name>.npz`` (and ``<DATASET>/test_mask/<name>.npz``) under ``DIR`` and writes::

    OUT/interactive/<name>.npz   imgs, spacing and boxes (when the case has them)
    OUT/text/<name>.npz          imgs, spacing and text_prompts (when the case has them)
    OUT/gts/<name>.npz           gts

so that ``segfm challenge-eval --images OUT/interactive --gts OUT/gts`` (or ``OUT/text``) runs
the official loops on them. ``--no_boxes NAME ...`` leaves the boxes out of those cases, as the
challenge does for datasets without boxes. Files are written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segfm.data.io.atomic import save_npz


def split_cases(root: str | Path, output: str | Path, no_boxes: tuple[str, ...] = ()) -> Path:
    """Write the interactive, text and ground-truth folders (see the module docstring).

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: If ``root`` has no evaluation case with a mask.
    """
    root, output = Path(root), Path(output)
    found = 0
    for image in sorted(root.glob("*/test/*.npz")):
        mask = image.parent.parent / "test_mask" / image.name
        if not mask.is_file():
            continue
        with np.load(image, allow_pickle=True) as npz:
            arrays = dict(npz)
        with np.load(mask) as npz:
            save_npz(output / "gts" / image.name, gts=npz["gts"])
        base = {"imgs": arrays["imgs"], "spacing": arrays["spacing"]}
        if "boxes" in arrays or image.stem in no_boxes:
            extra = {} if image.stem in no_boxes else {"boxes": arrays["boxes"]}
            save_npz(output / "interactive" / image.name, **base, **extra)
        if "text_prompts" in arrays:
            save_npz(output / "text" / image.name, **base, text_prompts=arrays["text_prompts"])
        found += 1
    if not found:
        msg = f"no <DATASET>/test/*.npz with a test_mask/ file under {root}"
        raise FileNotFoundError(msg)
    return output


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_tools.challenge_cases --root DIR --output OUT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="npz root (class_prompts.json)")
    parser.add_argument("--output", required=True, type=Path, help="folder to write")
    parser.add_argument("--no_boxes", nargs="*", default=[], help="case names to give no boxes")
    args = parser.parse_args(argv)
    out = split_cases(args.root, args.output, tuple(args.no_boxes))
    print(f"wrote {out}/interactive, {out}/text and {out}/gts")


if __name__ == "__main__":
    main()
