"""``strokeseg serve``'s page in a real browser (Debian's chromium, driven by Playwright, headless).

One visit, as a user would make it, on a server that needs a token (the page must carry it from its
own address into every API call, the viewer's file loads and the download links): the page shows the
research-use notice and the input statement; an upload of the stub scan ends done with the two
lesions and 2.304 mL in the table; the NiiVue viewer holds the scan and the mask and draws a
non-blank picture with red lesion pixels in it; the mask downloaded through the page's link has the
scan's affine; the stub scan declares no MNI space, so the page says why its lesions are not located,
once, instead of empty location columns; a broken upload ends in a clear message on the page, and the
next good upload, named in MNI space, completes with each lesion's hemisphere, class and regions.
Every request the page makes goes to the server's own origin, and the page raises no script error
and no content-security-policy violation.

Screenshots of the result and of the error land in ``$STROKESEG_TEST_ARTIFACTS`` (default
``tests/artifacts/``, git-ignored).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from serve_stub import AFFINE, LESION_VOXELS, SHAPE, VOXEL_ML

from strokeseg.serve.app import create_app

TOKEN = "browser-test-token"
# Root in a container: no sandbox. WebGL2 for NiiVue from SwiftShader (software rendering through
# ANGLE): a headless chromium has no GPU, and newer versions use SwiftShader for WebGL only when
# told that this is acceptable.
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
VIEWPORT = {"width": 1280, "height": 900}
FINISHED = ("done", "failed", "error")
CASE_TIMEOUT_MS = 60_000


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("STROKESEG_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def chromium() -> str:
    """Debian's chromium; without it a skip, or a failure where CI is set (CI must run this test)."""
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (Debian: apt-get install chromium); the page's browser test needs it"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def server(stub_models, tmp_path):
    """The app under uvicorn on a free loopback port, in a thread; its origin."""
    import uvicorn

    app = create_app(stub_models, token=TOKEN, work_dir=tmp_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass
class Seen:
    requests: list[str]          # every URL the browser asked for, in order
    errors: list[str]            # uncaught script errors on the page


@pytest.fixture
def browser_page(chromium, server):
    """A headless chromium page that records every request, script error and CSP violation."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        page = context.new_page()
        seen = Seen([], [])
        context.on("request", lambda request: seen.requests.append(request.url))
        page.on("pageerror", lambda error: seen.errors.append(str(error)))
        page.add_init_script("""
            window.__cspViolations = [];
            document.addEventListener('securitypolicyviolation',
                (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
        """)
        page.set_default_timeout(CASE_TIMEOUT_MS)
        try:
            yield page, seen
        finally:
            context.close()
            browser.close()


def upload_and_wait(page, path: Path) -> str:
    """Choose ``path`` for the scan, press Segment, wait for the case to end; the page's final status."""
    page.set_input_files("#file-t1w", str(path))
    page.click("#submit")
    page.wait_for_function(
        "(finished) => finished.includes(document.getElementById('status').dataset.status)",
        arg=list(FINISHED), timeout=CASE_TIMEOUT_MS)
    return page.get_attribute("#status", "data-status")


def assert_result_shown(page) -> None:
    error = page.locator("#error")
    assert page.get_attribute("#status", "data-status") == "done", error.text_content()
    assert page.text_content("#lesion-count") == "2"
    total = sum(LESION_VOXELS) * VOXEL_ML
    assert page.text_content("#total-volume") == f"{total:.3f}" == "2.304"
    assert "2.304 mL" in page.inner_text("#summary")
    assert page.text_content("#resampled") == "no"
    rows = page.locator("#lesion-rows tr")
    assert rows.count() == 2
    assert [int(v) for v in page.locator("#lesion-rows .lesion-voxels").all_text_contents()] == list(LESION_VOXELS)
    assert page.locator("#agreement-rows tr").count() == 3
    assert error.is_hidden()

    page.wait_for_selector("#viewer-wrap[data-viewer='ready'], #viewer-wrap[data-viewer='unavailable']")
    assert page.get_attribute("#viewer-wrap", "data-viewer") == "ready", page.text_content("#viewer-error")
    assert page.evaluate("window.strokesegViewer.volumes.length") == 2
    # The three planes with the 3-D render tile.
    assert page.evaluate("""() => {
        const nv = window.strokesegViewer;
        return nv.opts.sliceType === niivue.SLICE_TYPE.MULTIPLANAR
            && nv.opts.multiplanarShowRender === niivue.SHOW_RENDER.ALWAYS;
    }""")


def canvas_pixels(page) -> dict:
    """Draw the scene and read the WebGL canvas back in the same task (before the buffer is swapped)."""
    return page.evaluate("""() => {
        const nv = window.strokesegViewer;
        nv.drawScene();
        const source = nv.canvas;
        const copy = document.createElement('canvas');
        copy.width = source.width; copy.height = source.height;
        const ctx = copy.getContext('2d');
        ctx.drawImage(source, 0, 0);
        const data = ctx.getImageData(0, 0, copy.width, copy.height).data;
        const colours = new Set();
        let red = 0;
        for (let i = 0; i < data.length; i += 4) {
            colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
            if (data[i] > 150 && data[i] - Math.max(data[i + 1], data[i + 2]) > 80) red++;
        }
        return {width: copy.width, height: copy.height, colours: colours.size, red: red};
    }""")


def test_the_page_segments_a_scan_shows_it_in_the_viewer_and_survives_a_bad_upload(server, browser_page, scan_file,
                                                                                    tmp_path):
    from PIL import Image

    page, seen = browser_page
    started = time.monotonic()
    artifacts = artifacts_dir()

    # Without the token the page says what is missing instead of failing silently.
    page.goto(server + "/")
    page.wait_for_selector("#status[data-status='error']")
    assert "access token" in page.text_content("#error")

    page.goto(f"{server}/?token={TOKEN}")
    notice = page.locator("#notice")
    assert notice.is_visible() and "not for clinical use" in notice.text_content().lower()
    page.wait_for_selector("#file-t1w")
    assert "nifti" in page.text_content("#input-statement").lower()
    assert page.is_enabled("#submit")

    # A good scan: done, the table, the viewer, the downloads.
    assert upload_and_wait(page, scan_file) == "done", page.text_content("#error")
    assert_result_shown(page)
    # Not in MNI space: the reason once, and no location columns (not columns of empty cells).
    assert page.locator("#location-note").is_visible()
    assert "not in MNI space" in page.text_content("#location-note")
    assert page.locator("#lesions th.location-col").first.is_hidden()
    assert page.locator("#lesion-rows .lesion-hemisphere").count() == 0
    pixels = canvas_pixels(page)
    assert pixels["width"] > 100 and pixels["height"] > 100, pixels
    assert pixels["colours"] > 16, f"the viewer's canvas looks blank: {pixels}"
    assert pixels["red"] > 20, f"no red lesion overlay in the viewer: {pixels}"
    page.locator("#mask-opacity").fill("0.3")
    assert page.evaluate("window.strokesegViewer.volumes[1].opacity") == pytest.approx(0.3)
    assert page.text_content("#mask-opacity-value") == "30%"
    page.locator("#mask-opacity").fill("0.7")
    page.click("#lesion-2 .show-lesion")
    location = page.text_content("#viewer-location")       # the crosshair now sits in lesion 2
    assert location.endswith("\u00b7 lesion") and "x 11.0, y 13.0, z 5.0 mm" in location, location
    shot = page.locator("#viewer").screenshot()
    assert len(Image.open(io.BytesIO(shot)).convert("RGB").getcolors(1 << 24)) > 16
    page.screenshot(path=str(artifacts / "serve_result_full.png"), full_page=True)
    # The README's view: status, viewer and summary in one 1280x900 window.
    page.evaluate("document.getElementById('progress-heading').parentElement.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(artifacts / "serve_result.png"))

    # The mask comes through the page's own link (which carries the token) on the scan's grid.
    href = page.get_attribute("#download-mask", "href")
    assert href.startswith("/api/cases/") and f"token={TOKEN}" in href
    with page.expect_download() as download_info:
        page.click("#download-mask")
    mask_path = tmp_path / "downloaded_mask.nii.gz"
    download_info.value.save_as(mask_path)
    mask = nib.load(mask_path)
    assert mask.shape == SHAPE
    np.testing.assert_allclose(mask.affine, nib.load(scan_file).affine)
    np.testing.assert_allclose(mask.affine, AFFINE)
    assert int(np.asarray(mask.dataobj).sum()) == sum(LESION_VOXELS)
    for link in ("#download-table", "#download-overlay"):
        assert f"token={TOKEN}" in page.get_attribute(link, "href")

    # Random bytes named like a NIfTI: a clear message, the old result gone, the form still usable.
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert upload_and_wait(page, broken) == "failed"
    message = page.locator("#error")
    assert message.is_visible()
    assert message.text_content().startswith("The scan could not be segmented: ")
    assert len(message.text_content()) > len("The scan could not be segmented: ") + 10
    assert page.locator("#result").is_hidden()
    assert page.is_enabled("#submit")
    page.screenshot(path=str(artifacts / "serve_failed.png"))

    # ... and the next good upload completes as the first did; named in MNI space, its lesions are located.
    in_mni = tmp_path / "case_space-MNI152NLin2009aSym_T1w.nii.gz"
    shutil.copy(scan_file, in_mni)
    assert upload_and_wait(page, in_mni) == "done", page.text_content("#error")
    assert_result_shown(page)
    assert canvas_pixels(page)["red"] > 20
    assert page.locator("#location-note").is_hidden() and page.locator("#lesions th.location-col").first.is_visible()
    assert page.locator("#lesion-rows .lesion-hemisphere").all_text_contents() == ["left", "right"]
    assert all(page.locator("#lesion-rows .lesion-regions").all_text_contents())

    origin = server + "/"
    elsewhere = [url for url in seen.requests
                 if not (url.startswith(origin) or url.startswith("data:") or url.startswith("blob:" + origin))]
    assert not elsewhere, f"requests that left the server's origin: {elsewhere}"
    assert any("/static/vendor/niivue/" in url for url in seen.requests)
    assert seen.errors == [], seen.errors
    assert page.evaluate("window.__cspViolations") == []
    assert time.monotonic() - started < 60
