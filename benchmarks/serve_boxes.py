"""A trained model through ``segfm serve``: one box per organ, the slice's DSC, per request.

Loads a checkpoint into the server's app (in this process, through FastAPI's test client: the
same routes, no socket), loads a NIfTI volume through the page's route, and for every class of
its label draws the box a person draws on the class's middle axial slice (tight around the
slice's mask) as a new target; prints the DSC on that slice and the inference seconds. After
``make demo``, on a held-out case of the generated data:

    python benchmarks/serve_boxes.py --ckpt_path runs/medsam_demo/<RUN>/checkpoints/last.ckpt \\
        --image demo_data/raw/imagesTr/synth_021_0000.nii.gz \\
        --label demo_data/raw/labelsTr/synth_021.nii.gz --intensity ct
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segfm.data.io.nifti import read_nifti  # noqa: E402


def main() -> None:
    """Print one row per class."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--intensity", default="as_is", choices=["as_is", "ct", "mr"])
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from segfm.methods.loading import method_from_checkpoint
    from segfm.serve.app import create_app
    from segfm.serve.codec import unpack_mask
    from segfm.serve.session import Session

    method = method_from_checkpoint(args.ckpt_path, "cpu")
    label = read_nifti(args.label).array
    with tempfile.TemporaryDirectory() as run:
        client = TestClient(create_app(Session(method, intensity=args.intensity), run))
        name = Path(args.image).name
        loaded = client.post("/api/load", files={"file": (name, Path(args.image).read_bytes())})
        print(
            f"{type(method).__name__}, {name} {loaded.json()['shape']}, --intensity "
            f"{args.intensity}\n"
        )
        print("| class | slice | DSC on the slice | seconds |")
        print("|---|---|---|---|")
        scores = []
        for c in [int(v) for v in np.unique(label) if v > 0]:
            target = label == c
            zs = np.nonzero(target.any(axis=(1, 2)))[0]
            z = int(zs[len(zs) // 2])
            ys, xs = np.nonzero(target[z])
            client.post("/api/new_target")
            body = {
                "outer_point_one": [z, int(ys.min()), int(xs.min())],
                "outer_point_two": [z, int(ys.max()), int(xs.max())],
                "positive_click": True,
            }
            answer = client.post("/add_bbox_interaction", json=body)
            mask = unpack_mask(answer.content, label.shape).astype(bool)
            dsc = 2 * (mask[z] & target[z]).sum() / (mask[z].sum() + target[z].sum())
            scores.append(float(dsc))
            print(f"| {c} | {z} | {dsc:.3f} | {float(answer.headers['X-Segfm-Seconds']):.3f} |")
        print(f"| mean | | {np.mean(scores):.3f} | |")


if __name__ == "__main__":
    main()
