"""The README's picture of the ``segfm serve`` page: a trained model, a box and a click.

Starts ``segfm serve`` on a checkpoint, opens the page in headless Chromium (Debian's chromium
and chromedriver, through selenium), loads a NIfTI volume with the page's file input, draws a
box around one organ on its middle axial slice (the page's ``segfm.box``, what a drag sends),
shows that slice in all views, clicks once inside the organ and saves a screenshot. After
``make demo``:

    python benchmarks/serve_screenshot.py \\
        --ckpt_path runs/medsam_demo/<RUN>/checkpoints/last.ckpt \\
        --image demo_data/raw/imagesTr/synth_021_0000.nii.gz \\
        --label demo_data/raw/labelsTr/synth_021.nii.gz --organ 1 --intensity ct \\
        --output docs/images/serve_page.png
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import chromium, wait_until_serving  # noqa: E402
from segfm.data.io.nifti import read_nifti  # noqa: E402


def _wait(driver, condition: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(f"return Boolean({condition})"):
        if time.monotonic() > deadline:
            status = driver.execute_script("return document.getElementById('status').textContent")
            msg = f"the page never reached {condition}: {status}"
            raise RuntimeError(msg)
        time.sleep(0.1)


def main() -> None:
    """Serve, prompt, save the screenshot."""
    from selenium.webdriver.common.by import By

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--organ", type=int, default=1)
    parser.add_argument("--intensity", default="as_is")
    parser.add_argument("--output", default="docs/images/serve_page.png")
    args = parser.parse_args()
    target = read_nifti(args.label).array == args.organ
    zs = np.nonzero(target.any(axis=(1, 2)))[0]
    z = int(zs[len(zs) // 2])
    ys, xs = np.nonzero(target[z])
    inside = np.argwhere(target[z])
    cy, cx = (int(v) for v in inside[len(inside) // 2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "segfm", "serve", "--ckpt_path", args.ckpt_path]
        command += ["--port", str(port), "--intensity", args.intensity, "--run_dir", tmp]
        server = subprocess.Popen(command)
        url = f"http://127.0.0.1:{port}"
        driver = None
        try:
            wait_until_serving(url, server)
            driver = chromium(f"{tmp}/chrome", window="1400,800")
            driver.get(url)
            _wait(driver, "segfm.done > 0 && !segfm.busy")
            done = driver.execute_script("return segfm.done")
            driver.find_element(By.ID, "file").send_keys(str(Path(args.image).resolve()))
            _wait(driver, f"segfm.ready && segfm.done > {done} && !segfm.busy")
            one = [z, int(ys.min()), int(xs.min())]
            two = [z, int(ys.max()), int(xs.max())]
            driver.execute_script("return segfm.box(arguments[0], arguments[1])", one, two)
            _wait(driver, "!segfm.busy")
            for view, index in (("axial", z), ("coronal", cy), ("sagittal", cx)):
                driver.execute_script("segfm.setSlice(arguments[0], arguments[1])", view, index)
            driver.execute_script("return segfm.point(arguments[0], true)", [z, cy, cx])
            _wait(driver, "!segfm.busy")
            time.sleep(0.5)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.output)
            print(f"wrote {args.output}")
        finally:
            if driver is not None:
                driver.quit()
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
