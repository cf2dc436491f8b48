"""``segfm serve`` timings: start-up, upload, the first prompt (with encoding) and each click.

Each method is built at its released size with seeded random weights (no download), saved as a
checkpoint and served by a fresh ``segfm serve --ckpt_path`` process on localhost. A client
then does what a person in 3D Slicer does (the SlicerNNInteractive requests): uploads one
generated CT case (the ``imgs`` of ``data_tools.synthetic_npz``, about 32 x 96 x 96 voxels),
sends an empty segment, draws a box on the middle slice of one organ, then places five clicks,
each at the centre of the largest error of the mask it got back. Seconds are the client's
(the whole HTTP round trip: request, inference, packing, transfer); ``server s`` is the
inference alone (``X-Segfm-Seconds``). ``ratio`` is a click's seconds / the first prompt's:
what the embedding cache saves (the first prompt encodes, the clicks decode; SegVol's zoom-in
encodes its window again on every prompt, so it saves less).

    python benchmarks/bench_serve.py [--methods sam_med3d segvol medsam] [--tiny]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import numpy as np
import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import wait_until_serving  # noqa: E402
from data_tools.synthetic_npz import SEMANTIC, make_dataset  # noqa: E402
from data_tools.tiny_clip import write_tiny_clip  # noqa: E402
from segfm.prompts import center_error_click  # noqa: E402

RELEASED = {
    "sam_med3d": ("segfm.methods.SAMMed3D", {"arch": "sam_med3d"}),
    "segvol": ("segfm.methods.SegVol", {"arch": "base", "clip": True}),
    "medsam": ("segfm.methods.MedSAM", {"arch": "vit_b"}),
}
TINY = {
    "sam_med3d": {"arch": "tiny", "image_size": 32},
    "segvol": {"arch": "tiny", "roi_size": [16, 32, 32], "clip": True},
    "medsam": {"arch": "tiny", "image_size": 64},
}
READY = re.compile(r"ready in ([\d.]+) s")
CLICKS = 5


def _checkpoint(tmp: Path, class_path: str, args: dict, clip: Path) -> Path:
    from segfm.methods.loading import instantiate_method

    args = dict(args)
    if args.pop("clip", False):
        args["clip_dir"] = str(clip)
    torch.manual_seed(0)
    method = instantiate_method(class_path, args, "bench_serve")
    path = tmp / f"{class_path.rsplit('.', 1)[-1]}.ckpt"
    hparams = dict(method.hparams) | {"_class_path": class_path}
    torch.save({"state_dict": method.state_dict(), "hyper_parameters": hparams}, path)
    return path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _mask(response: requests.Response, shape: tuple[int, ...]) -> np.ndarray:
    if "application/json" in response.headers.get("content-type", ""):
        msg = f"the server answered {response.json()}"
        raise RuntimeError(msg)
    bits = np.unpackbits(np.frombuffer(response.content, dtype=np.uint8))[: int(np.prod(shape))]
    return bits.reshape(shape)


def _timed(url: str, **kwargs) -> tuple[requests.Response, float]:
    start = time.perf_counter()
    response = requests.post(url, timeout=3600, **kwargs)
    return response, time.perf_counter() - start


def run(name: str, ckpt: Path, image: np.ndarray, target: np.ndarray, tmp: Path) -> dict:
    """Serve ``ckpt`` in a new process and time a person's session on ``image``."""
    port = _port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "segfm", "serve", "--ckpt_path", str(ckpt), "--port"]
    command += [str(port), "--run_dir", str(tmp / f"run_{name}"), "--device", "cpu"]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        startup = wait_until_serving(url, process)
        files = {"file": ("volume.npy", _npy(image), "application/octet-stream")}
        _, upload = _timed(f"{url}/upload_image", files=files)
        empty = gzip.compress(_npy(np.zeros(image.shape, np.uint8)))
        files = {"file": ("volume.npy.gz", empty, "application/octet-stream")}
        requests.post(f"{url}/upload_segment", files=files, headers={"Content-Encoding": "gzip"})
        zs = np.nonzero(target.any(axis=(1, 2)))[0]
        z = int(zs[len(zs) // 2])
        ys, xs = np.nonzero(target[z])
        body = {
            "outer_point_one": [z, int(ys.min()), int(xs.min())],
            "outer_point_two": [z, int(ys.max()), int(xs.max())],
            "positive_click": True,
        }
        response, first = _timed(f"{url}/add_bbox_interaction", json=body)
        first_server = float(response.headers["X-Segfm-Seconds"])
        mask = _mask(response, image.shape)
        clicks, server = [], []
        for _ in range(CLICKS):
            found = center_error_click(mask, target)
            if found is None:
                break
            point, positive = found
            body = {"voxel_coord": [int(v) for v in point], "positive_click": bool(positive)}
            response, seconds = _timed(f"{url}/add_point_interaction", json=body)
            mask = _mask(response, image.shape)
            clicks.append(seconds)
            server.append(float(response.headers["X-Segfm-Seconds"]))
    finally:
        process.send_signal(signal.SIGINT)
        out = process.communicate(timeout=60)[0].decode()
    ready = READY.search(out)
    return {
        "startup": startup,
        "model": float(ready.group(1)) if ready else float("nan"),
        "upload": upload,
        "first": first,
        "first_server": first_server,
        "click": mean(clicks) if clicks else float("nan"),
        "click_server": mean(server) if server else float("nan"),
        "clicks": len(clicks),
    }


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["sam_med3d", "segvol"])
    parser.add_argument("--tiny", action="store_true", help="tiny networks (a quick check)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root = make_dataset(tmp / "npz", num_cases=1, num_test=1, seed=0)
        case = f"{SEMANTIC}_t00.npz"
        with np.load(root / SEMANTIC / "test" / case, allow_pickle=True) as npz:
            image = npz["imgs"]
        with np.load(root / SEMANTIC / "test_mask" / case) as npz:
            gts = npz["gts"]
        organ = int(np.bincount(gts[gts > 0].ravel()).argmax())  # the largest organ
        target = (gts == organ).astype(np.uint8)
        clip = write_tiny_clip(tmp / "clip")
        size = "tiny" if args.tiny else "released"
        rows = []
        for name in args.methods:
            class_path, init = RELEASED[name]
            init = TINY[name] if args.tiny else init
            ckpt = _checkpoint(tmp, class_path, init, clip)
            print(f"{name}: serving ({size} network) ...", file=sys.stderr, flush=True)
            rows.append((name, run(name, ckpt, image, target, tmp)))
    shape = "x".join(str(v) for v in image.shape)
    print(
        f"`segfm serve`, {size} networks with random weights, CPU ({torch.get_num_threads()} "
        f"threads), one {shape} CT case ({image.dtype}), box then {CLICKS} clicks on one "
        "organ\n"
    )
    print(
        "| method | start-up s (model s) | upload s | box s (server) | click s (server) "
        "| clicks | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['startup']:.1f} ({r['model']:.1f}) | {r['upload']:.3f} "
            f"| {r['first']:.2f} ({r['first_server']:.2f}) | {r['click']:.2f} "
            f"({r['click_server']:.2f}) | {r['clicks']} | {r['click'] / r['first']:.2f} |"
        )


if __name__ == "__main__":
    main()
