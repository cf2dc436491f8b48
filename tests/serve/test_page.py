"""The web page of ``segfm serve`` in headless Chromium, against a real server.

One browser and one uvicorn server (in a thread, on a free localhost port) serve the whole
module; the model is a tiny seeded SAM-Med3D on the CPU. Every test loads the volume again
through the page's file input, so each starts from a fresh target.

Set ``SEGFM_SCREENSHOT`` to a path to keep the page's screenshot there (the README's image).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

import segfm.methods
import segfm.serve.app
import segfm.serve.session
from benchmarks.common import chromium
from segfm.data.io.nifti import read_nifti, write_nifti
from segfm.serve.codec import unpack_mask
from tests.serve.conftest import live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHAPE = (24, 48, 48)  # (Z, Y, X)
#: voxel sizes (x, y, z) in the file's axis order, and where voxel 0 lies (mm)
ZOOMS, ORIGIN = (0.8, 0.8, 2.0), (-19.2, 12.5, 40.0)
WAIT = 30.0
#: the volume axes of each view's rows and columns, and the axis it fixes
VIEW_AXES = {"axial": (1, 2, 0), "coronal": (0, 2, 1), "sagittal": (0, 1, 2)}


@dataclass
class Page:
    """The browser on the page, the server behind it and the volume it loads."""

    driver: Any
    url: str
    session: segfm.serve.session.Session
    nifti: Path
    affine: np.ndarray

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)


def _volume() -> np.ndarray:
    """A bright ellipsoid and a dimmer ball on a darker, noisy background (int16)."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(float)
    rng = np.random.default_rng(0)
    image = 60.0 + 25.0 * y / SHAPE[1] + rng.normal(0, 6.0, SHAPE)
    body = ((z - 12) / 7) ** 2 + ((y - 24) / 13) ** 2 + ((x - 23) / 11) ** 2 < 1
    ball = ((z - 10) / 4) ** 2 + ((y - 11) / 5) ** 2 + ((x - 38) / 5) ** 2 < 1
    image[body] += 140.0
    image[ball] += 70.0
    return np.rint(image).astype(np.int16)


def _missing_browser() -> str | None:
    """Why the browser cannot run, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if not missing:
        return None
    return (
        f"{' and '.join(missing)} not found: the page's test drives Debian's Chromium; "
        "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    missing = _missing_browser()
    if missing:
        pytest.fail(missing, pytrace=False)
    folder = tmp_path_factory.mktemp("page")
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = ORIGIN
    nifti = folder / "phantom.nii.gz"
    write_nifti(nifti, _volume(), affine)
    torch.manual_seed(0)
    method = segfm.methods.SAMMed3D(arch="tiny", image_size=32).eval()
    session = segfm.serve.session.Session(method)
    app = segfm.serve.app.create_app(session, folder / "run")
    with live_server(app) as url:
        driver = chromium(folder / "chrome")
        try:
            driver.get(url)
            result = Page(driver, url, session, nifti, affine)
            _wait(result, "segfm.done > 0 && !segfm.busy")
            yield result
        finally:
            driver.quit()


# ------------------------------------------------------------------------------ helpers


def _wait(page: Page, condition: str, timeout: float = WAIT) -> None:
    """Wait until the JavaScript expression ``condition`` holds on the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(page.driver, timeout, poll_frequency=0.05).until(
            lambda driver: driver.execute_script(f"return Boolean({condition})")
        )
    except TimeoutException:
        pytest.fail(f"the page never reached {condition} in {timeout:.0f} s: {_status(page)!r}")


def _status(page: Page) -> str:
    return page.js("return document.getElementById('status').textContent")


def _no_script_errors(page: Page) -> None:
    """No JavaScript errors since the last call (answers with HTTP error codes aside)."""
    logged = page.driver.get_log("browser")
    errors = [
        entry["message"]
        for entry in logged
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
    assert not errors, errors


def _status_is_error(page: Page) -> bool:
    return page.js("return document.getElementById('status').classList.contains('error')")


def _settle(page: Page, act: Any) -> None:
    """Do ``act`` (something that sends one request) and wait for the answer to be shown."""
    done = page.js("return segfm.done")
    act()
    _wait(page, f"segfm.done > {done} && !segfm.busy")


def _load(page: Page, path: Path) -> None:
    from selenium.webdriver.common.by import By

    _settle(page, lambda: page.driver.find_element(By.ID, "file").send_keys(str(path)))


def _load_phantom(page: Page) -> None:
    _load(page, page.nifti)
    assert page.js("return segfm.ready"), _status(page)
    assert page.js("return segfm.shape") == list(SHAPE)


def _view(page: Page, name: str) -> dict:
    """Where a view lies in the viewport, its axes, and its canvas pixels per voxel."""
    view = page.js(
        """const c = document.querySelector(`#${arguments[0]} canvas.ui`);
        const r = c.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                pixelsWide: c.width, pixelsHigh: c.height};""",
        name,
    )
    view["rows"], view["cols"], view["fixed"] = VIEW_AXES[name]
    rows, cols = SHAPE[view["rows"]], SHAPE[view["cols"]]
    assert view["pixelsWide"] % cols == 0 and view["pixelsHigh"] % rows == 0, view
    view["sx"], view["sy"] = view["pixelsWide"] // cols, view["pixelsHigh"] // rows
    return view


def _at(view: dict, row: int, col: int) -> tuple[int, int]:
    """The viewport point (CSS pixels) at the centre of a view's voxel (row, col)."""
    css_x = (col + 0.5) * view["sx"] * view["width"] / view["pixelsWide"]
    css_y = (row + 0.5) * view["sy"] * view["height"] / view["pixelsHigh"]
    return round(view["left"] + css_x), round(view["top"] + css_y)


def _pointer(page: Page) -> Any:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    builder = ActionBuilder(page.driver)
    return builder, builder.pointer_action


def _drag(page: Page, start: tuple[int, int], end: tuple[int, int]) -> None:
    builder, pointer = _pointer(page)
    middle = ((start[0] + end[0]) // 2, (start[1] + end[1]) // 2)
    pointer.move_to_location(*start).pointer_down()
    pointer.move_to_location(*middle).move_to_location(*end).pointer_up()
    _settle(page, builder.perform)


def _click(page: Page, at: tuple[int, int], right: bool = False) -> None:
    from selenium.webdriver.common.actions.mouse_button import MouseButton

    button = MouseButton.RIGHT if right else MouseButton.LEFT
    builder, pointer = _pointer(page)
    pointer.move_to_location(*at).pointer_down(button=button).pointer_up(button=button)
    _settle(page, builder.perform)


def _wheel(page: Page, name: str, delta: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    canvas = page.driver.find_element("css selector", f"#{name} canvas.ui")
    ActionChains(page.driver).scroll_from_origin(
        ScrollOrigin.from_element(canvas), 0, delta
    ).perform()


def _page_mask(page: Page) -> np.ndarray:
    digits = page.js("return segfm.mask.join('')")
    return (np.frombuffer(digits.encode(), dtype=np.uint8) - ord("0")).reshape(SHAPE)


def _server_mask(page: Page) -> np.ndarray:
    response = requests.get(f"{page.url}/api/mask", timeout=10)  # requests undoes the gzip
    response.raise_for_status()
    return unpack_mask(response.content, SHAPE)


def _axial_canvas(page: Page) -> tuple[np.ndarray, np.ndarray]:
    """The axial canvas's pixels: tinted by the overlay (red differs from green), and red."""
    width, height, tinted, red = page.js(
        """const c = document.querySelector('#axial canvas.image');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const tinted = new Array(c.width * c.height), red = new Array(c.width * c.height);
        for (let i = 0; i < tinted.length; i++) {
          tinted[i] = data[4 * i] !== data[4 * i + 1] ? 1 : 0;
          red[i] = data[4 * i];
        }
        return [c.width, c.height, tinted.join(''), red];"""
    )
    flags = np.frombuffer(tinted.encode(), dtype=np.uint8) - ord("0")
    return flags.reshape(height, width), np.asarray(red, dtype=np.uint8).reshape(height, width)


def _screenshot(page: Page, path: Path) -> None:
    """The window to ``path``; to ``$SEGFM_SCREENSHOT`` too, without the empty space below."""
    page.driver.save_screenshot(str(path))
    target = os.environ.get("SEGFM_SCREENSHOT")
    if target:
        from PIL import Image

        bottom = page.js(
            "return Math.ceil(document.getElementById('help').getBoundingClientRect().bottom) + 14"
        )
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as shot:
            shot.crop((0, 0, shot.width, min(shot.height, bottom))).save(target, optimize=True)


# ------------------------------------------------------------------------------ tests


def test_chromium_and_chromedriver_are_installed() -> None:
    missing = _missing_browser()
    if missing:  # a failure, never a skip: without them the page goes untested
        pytest.fail(missing, pytrace=False)


def test_box_and_click_show_the_servers_mask(page: Page, tmp_path: Path) -> None:
    _load_phantom(page)
    assert page.js("return document.getElementById('method').textContent") == "SAMMed3D"
    assert not page.js("return document.getElementById('text-form').offsetParent")  # no text
    slices = page.js("return segfm.slices")
    assert slices == {"axial": 12, "coronal": 24, "sagittal": 24}
    z = slices["axial"]
    view = _view(page, "axial")

    # a box around the ellipsoid on the axial slice
    (y0, x0), (y1, x1) = (10, 11), (38, 35)
    _drag(page, _at(view, y0, x0), _at(view, y1, x1))
    box = page.session.target.prompt.box
    assert box is not None, _status(page)
    assert box["z_min"] == box["z_max"] == box["z_mid"] == z
    corners = [box["z_mid_y_min"], box["z_mid_x_min"], box["z_mid_y_max"], box["z_mid_x_max"]]
    assert np.abs(np.subtract(corners, [y0, x0, y1, x1])).max() <= 1, corners
    assert page.session.target.prompt.fg == []

    # then a positive click inside it
    _click(page, _at(view, 24, 22))
    prompt = page.session.target.prompt
    assert prompt.fg == [(z, 24, 22)] and prompt.bg == [] and prompt.box == box
    assert "Positive point at z 12, y 24, x 22" in _status(page)
    assert " s, " in _status(page) and not _status_is_error(page)

    _screenshot(page, tmp_path / "page.png")

    # (a) the page's mask is the server's
    mask = _page_mask(page)
    np.testing.assert_array_equal(mask, _server_mask(page))
    np.testing.assert_array_equal(mask, page.session.mask)
    assert mask[z].any(), "the tiny model's mask is empty on the shown slice"

    # (b) the overlay tints exactly the mask's voxels on the shown slice, grey elsewhere
    tinted, red = _axial_canvas(page)
    blocks = np.ones((view["sy"], view["sx"]), dtype=np.uint8)
    np.testing.assert_array_equal(tinted, np.kron(mask[z], blocks))
    grey = np.frombuffer(requests.get(f"{page.url}/api/image", timeout=10).content, np.uint8)
    expected = np.kron(grey.reshape(SHAPE)[z], blocks)
    np.testing.assert_array_equal(red[tinted == 0], expected[tinted == 0])

    # another slice shows that slice's mask: set by the page's function, or by the wheel
    assert page.js("return segfm.setSlice('axial', arguments[0])", z + 2) == z + 2
    tinted, _ = _axial_canvas(page)
    np.testing.assert_array_equal(tinted, np.kron(mask[z + 2], blocks))
    _wheel(page, "axial", 120)
    assert page.js("return segfm.slices.axial") == z + 3
    tinted, _ = _axial_canvas(page)
    np.testing.assert_array_equal(tinted, np.kron(mask[z + 3], blocks))
    page.js(
        """const slider = document.querySelector('#coronal .slider');
        slider.value = 30;
        slider.dispatchEvent(new Event('input'));"""
    )
    assert page.js("return segfm.slices.coronal") == 30
    assert page.js("return document.querySelector('#coronal .slice-label').textContent") == (
        "y = 30 of 0–47"
    )
    _no_script_errors(page)


def test_negative_click_undo_new_target_and_download(page: Page, tmp_path: Path) -> None:
    _load_phantom(page)
    # a box on the coronal view (y fixed) spans slices: [z0, y, x0] to [z1, y, x1]
    coronal = _view(page, "coronal")
    _drag(page, _at(coronal, 6, 12), _at(coronal, 18, 34))
    assert page.session.target.prompt.box == {
        "z_min": 6,
        "z_max": 18,
        "z_mid": 12,
        "z_mid_x_min": 12,
        "z_mid_y_min": 24,
        "z_mid_x_max": 34,
        "z_mid_y_max": 24,
    }, _status(page)
    axial = _view(page, "axial")
    _drag(page, _at(axial, 10, 11), _at(axial, 38, 35))
    assert page.session.target.prompt.box["z_min"] == 12, _status(page)
    before = page.session.mask.copy()

    # a right click on the sagittal view (x fixed): a negative point [z, y, x]
    _click(page, _at(_view(page, "sagittal"), 14, 30), right=True)
    assert page.session.target.prompt.bg == [(14, 30, 24)], _status(page)
    assert page.session.target.prompt.fg == []
    assert "Negative point" in _status(page)
    np.testing.assert_array_equal(_page_mask(page), page.session.mask)

    _settle(page, page.driver.find_element("id", "undo").click)
    assert page.session.target.prompt.bg == [], _status(page)
    np.testing.assert_array_equal(page.session.mask, before)
    np.testing.assert_array_equal(_page_mask(page), before)

    href = page.driver.find_element("id", "download").get_property("href")
    assert href == f"{page.url}/api/mask.nii.gz"
    download = tmp_path / "mask.nii.gz"
    download.write_bytes(requests.get(href, timeout=10).content)
    volume = read_nifti(download)
    np.testing.assert_array_equal(volume.affine, read_nifti(page.nifti).affine)
    np.testing.assert_allclose(volume.affine, page.affine, atol=1e-5)
    np.testing.assert_array_equal(volume.array, before)

    _settle(page, page.driver.find_element("id", "new-target").click)
    assert not _page_mask(page).any() and not page.session.mask.any()
    assert page.session.target.prompt.box is None
    _no_script_errors(page)


def test_errors_are_shown_and_the_page_keeps_working(page: Page, tmp_path: Path) -> None:
    _load_phantom(page)
    text = tmp_path / "notes.txt"
    text.write_text("not a volume\n")
    _load(page, text)
    assert "cannot load 'notes.txt'" in _status(page)
    assert "cannot load 'notes.txt'" in page.js("return segfm.lastError")
    assert page.js("return segfm.ready && segfm.shape.join()") == ",".join(map(str, SHAPE))

    # the Slicer routes answer errors with HTTP 200 and JSON
    _settle(page, lambda: page.js("segfm.point([3, 4, 99], true)"))
    assert "lies outside the image" in _status(page)
    assert _status_is_error(page)
    # segfm's routes answer them with an HTTP error code
    _settle(page, page.driver.find_element("id", "undo").click)
    assert "nothing to undo" in page.js("return segfm.lastError")

    _click(page, _at(_view(page, "axial"), 24, 22))
    assert page.session.target.prompt.fg == [(12, 24, 22)], _status(page)
    assert not _status_is_error(page)
    np.testing.assert_array_equal(_page_mask(page), page.session.mask)
    _no_script_errors(page)
