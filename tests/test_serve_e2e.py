"""The viewer end to end in a real headless Chromium (Playwright, Debian's chromium): open with the
token, upload the embedded hippocampus case (as a DICOM ZIP, so DICOM-SEG can reference it), run
the model, see the overlay, scroll, toggle a label, paint with the brush, save, approve, export
DICOM-SEG (checked with highdicom) and show an explanation. Screenshots of every step are kept
in test-artifacts/serve/ (look at them: they must show the scan with the contours)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

playwright = pytest.importorskip("playwright.sync_api")

from .serve_fixtures import CASE, hippocampus_dicom_zip, serve_models  # noqa: F401,E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DELINEO_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "serve"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, serve_models):
    """``delineo serve`` as a user starts it; yields the printed URL (with its token)."""
    ws = tmp_path_factory.mktemp("viewer_ws")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "delineo.cli", "serve", "--models", str(serve_models),
                             "--workspace", str(ws), "--port", str(port), "--user", "Dr E2E"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
    assert m, f"delineo serve printed no URL: {line!r}"
    url = m.group(1)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def launch(p):
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"])


def canvas_pixels(page) -> np.ndarray:
    """RGB pixels of the viewer canvas as shown on screen (a screenshot, not the GL buffer)."""
    from io import BytesIO

    from PIL import Image as PILImage

    return np.asarray(PILImage.open(BytesIO(page.locator("#gl").screenshot())).convert("RGB")).astype(int)


def coloured(px: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """Pixels tinted towards ``rgb`` (label colour blended over grey): hue test, not exact match."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    if rgb == (0, 180, 220):  # posterior: blue-cyan
        return int(np.count_nonzero((b - r > 40) & (g - r > 25)))
    if rgb == (220, 216, 20):  # anterior: yellow
        return int(np.count_nonzero((r - b > 40) & (g - b > 40)))
    raise ValueError(rgb)


def wait_js(page, expression: str, timeout: float = 60) -> None:
    """Poll ``expression`` with page.evaluate (wait_for_function would need 'unsafe-eval', which
    the viewer's Content-Security-Policy rightly forbids)."""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        assert time.time() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def settled(page) -> None:
    """Wait until the browser has drawn two more frames: NiiVue redraws on state changes, so after
    waiting on the state itself this makes the next screenshot show it (no fixed sleeps)."""
    drew = page.evaluate("new Promise((done) => { setTimeout(() => done(false), 10000); "
                         "requestAnimationFrame(() => requestAnimationFrame(() => done(true))); })")
    assert drew, "the page drew no frame in 10 s"


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_radiologist_workflow(server, hippocampus_dicom_zip, tmp_path):
    import highdicom as hd
    from playwright.sync_api import expect, sync_playwright

    timings: dict[str, float] = {}
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 820}, accept_downloads=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))

        # 1. open with the token: the cookie keeps the token out of the address bar
        t0 = time.perf_counter()
        page.goto(server)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        timings["ui_ready_s"] = time.perf_counter() - t0
        wait_js(page, "performance.getEntriesByName('first-contentful-paint').length > 0", 30)
        fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
        timings["first_paint_s"] = fcp / 1000
        assert "token" not in page.url
        shot(page, "01_open")
        page.reload()  # a second visit: the measure of first paint that excludes browser start-up
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        # the paint entry is queued after the frame is shown: wait for it rather than read too early
        wait_js(page, "performance.getEntriesByName('first-contentful-paint').length > 0", 30)
        timings["first_paint_reload_s"] = page.evaluate(
            "performance.getEntriesByName('first-contentful-paint')[0].startTime") / 1000
        timings["ui_ready_reload_s"] = page.evaluate("performance.now()") / 1000

        # 2. upload the embedded hippocampus case (DICOM ZIP)
        page.set_input_files("#file", str(hippocampus_dicom_zip))
        expect(page.locator("#status")).to_contain_text("35×51×35 voxels", timeout=30_000)
        expect(page.locator("#studies li")).to_have_count(1)
        settled(page)
        before = canvas_pixels(page)
        shot(page, "02_study")

        # 3. run the model: contours appear
        expect(page.locator("#run")).to_be_enabled()
        page.click("#run")
        page.wait_for_selector("body[data-mask-version$=':1']", timeout=60_000)
        timings["run_to_contours_s"] = float(page.get_attribute("body", "data-run-to-contours"))
        expect(page.locator("#structures tbody tr").first).to_be_visible()
        settled(page)
        after = canvas_pixels(page)
        shot(page, "03_contours")
        assert coloured(after, (0, 180, 220)) > 500 + coloured(before, (0, 180, 220)), "no posterior overlay on screen"
        expect(page.locator("#structures tbody tr").first).to_be_visible()
        expect(page.locator("#mask-state")).to_contain_text("draft")

        # 4. scroll through the slices of the axial view
        page.click("[data-view='axial']")
        wait_js(page, "delineo.nv.opts.sliceType === delineo.nv.sliceTypeAxial", 10)
        settled(page)
        z0 = page.evaluate("delineo.nv.scene.crosshairPos[2]")
        box = page.locator("#gl").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(4):
            page.mouse.wheel(0, 120)
        # the wheel events are handled asynchronously: wait for the slice to move, then check it did
        try:
            wait_js(page, f"delineo.nv.scene.crosshairPos[2] !== {z0!r}", 10)
        except AssertionError:
            pass
        z1 = page.evaluate("delineo.nv.scene.crosshairPos[2]")
        assert z1 != z0, "the mouse wheel did not change the slice"
        row0 = page.locator("#structures tbody tr").first
        centre_mm = [float(v) for v in re.search(r"centre ([-\d., ]+) mm", row0.get_attribute("title")).group(1).split(",")]
        row0.locator("td").first.click()  # jump to the largest structure (the row, not its explain button)
        # the crosshair lands on the structure's centre
        wait_js(page, f"delineo.nv.mm2frac({centre_mm}).every((v, i) => Math.abs(v - delineo.nv.scene.crosshairPos[i]) < 1e-4)", 10)
        settled(page)
        shot(page, "04_scrolled_axial")

        # 5. toggle the posterior label off and on
        shown = coloured(canvas_pixels(page), (0, 180, 220))
        assert shown > 200
        page.uncheck("#labels [data-label='2']")
        wait_js(page, "delineo.state.hidden.has(2)", 10)
        settled(page)
        hidden = coloured(canvas_pixels(page), (0, 180, 220))
        shot(page, "05_label_hidden")
        assert hidden < shown * 0.05, (shown, hidden)
        page.check("#labels [data-label='2']")
        wait_js(page, "!delineo.state.hidden.has(2)", 10)
        settled(page)

        # 5b. contours instead of the filled mask: far fewer coloured pixels, but some
        filled = coloured(canvas_pixels(page), (0, 180, 220))
        page.check("#outline")
        wait_js(page, "!!delineo.state.contour && delineo.nv.volumes.includes(delineo.state.contour)")
        settled(page)
        outlined = coloured(canvas_pixels(page), (0, 180, 220))
        shot(page, "05b_contours_only")
        assert 50 < outlined < filled * 0.8, (filled, outlined)

        # 6. paint label 1 (anterior) with the brush, undo once, paint again, save the correction
        page.click("#tool-brush")
        page.select_option("#pen-label", "1")
        page.fill("#pen", "4")
        page.dispatch_event("#pen", "change")
        count1 = "delineo.nv.drawBitmap.reduce((n, v) => n + (v === 1), 0)"
        n0 = page.evaluate(count1)
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

        def stroke(dx: float):
            page.mouse.move(cx - 60 + dx, cy - 20)
            page.mouse.down()
            for i in range(12):
                page.mouse.move(cx - 60 + dx + i * 10, cy - 20 + i * 3)
            page.mouse.up()

        stroke(0)
        wait_js(page, f"{count1} !== {n0}", 10)  # pointer events are handled asynchronously
        n1 = page.evaluate(count1)
        assert n1 > n0, "the brush painted nothing"
        page.click("#undo")
        assert page.evaluate(count1) == n0, "undo did not remove the stroke"
        stroke(0)
        wait_js(page, f"{count1} !== {n0}", 10)
        n2 = page.evaluate(count1)
        assert n2 == n1
        shot(page, "06_painted")
        page.click("#tool-nav")
        page.click("#save")
        page.wait_for_selector("body[data-mask-version$=':2']", timeout=20_000)
        expect(page.locator("#versions")).to_contain_text("v2 edit by Dr E2E")

        # 7. approve and export DICOM-SEG
        page.fill("#user", "Dr Approver")
        page.dispatch_event("#user", "change")
        page.click("#approve")
        expect(page.locator("#mask-state")).to_contain_text("approved")
        expect(page.locator("#versions")).to_contain_text("approved v2 by Dr Approver")
        with page.expect_download() as dl:
            page.click("#export-dicom-seg")
        target = tmp_path / "export_seg.dcm"
        dl.value.save_as(target)
        shutil.copy(target, ARTIFACTS / "export_seg.dcm")
        seg = hd.seg.segread(target)
        labels = {s.SegmentLabel for s in seg.SegmentSequence}
        assert "Anterior" in labels, labels  # the painted label made it into the export
        volume = seg.get_volume(combine_segments=False)
        assert volume.array.shape[:3] in [(35, 51, 35), (35, 35, 51), (51, 35, 35)] or volume.array.size > 0
        shot(page, "07_approved")

        # 8. explain: heat map with its colour bar
        # activation maps are non-zero even for this barely trained model (its saturated softmax
        # gives zero gradients, so gradient methods explain nothing here)
        page.select_option("#explain-method", "activation")
        page.click("#explain")
        page.wait_for_selector("body[data-explained]", timeout=240_000)
        page.click("[data-view='multi']")
        wait_js(page, "delineo.nv.opts.sliceType === delineo.nv.sliceTypeMultiplanar", 10)
        settled(page)
        shot(page, "08_explained")
        assert page.evaluate("delineo.nv.volumes.length") == 2
        assert page.evaluate("delineo.state.heat.colorbarVisible") is True
        px = canvas_pixels(page)
        heat = int(np.count_nonzero((px[..., 0] > 200) & (px[..., 1] > 60) & (px[..., 1] < 200) & (px[..., 2] < 60)))
        assert heat > 500, heat  # orange heat-map pixels (the 'warm' colour map) on screen

        # 9. explain one lesion: a structures row's explain button, that component as the target
        first = page.get_attribute("body", "data-explained")
        page.locator("#structures tbody tr").first.locator("[data-explain-lesion]").click()
        # an explanation takes seconds on a quiet machine, a minute or more on a loaded one; a failed
        # job ends the wait at once (its message is in the status line, which the next check shows)
        wait_js(page, f"document.body.dataset.explained !== '{first}' || "
                      "document.querySelector('#status').className === 'error'", 240)
        expect(page.locator("#status")).to_contain_text("for lesion #1 of label", timeout=1000)
        settled(page)
        shot(page, "09_lesion_explained")
        assert page.evaluate("delineo.nv.volumes.length") == 2  # the label's heat map was replaced
        assert page.evaluate("delineo.state.heat.colorbarVisible") is True

        assert not errors, errors
        outside = [u for u in requests if not u.startswith(server.split("?")[0]) and not u.startswith(("blob:", "data:"))]
        assert not outside, f"requests left the server: {outside}"
        browser.close()
    (ARTIFACTS / "timings.txt").write_text("".join(f"{k} {v:.3f}\n" for k, v in timings.items()))
    # targets: first paint < 1 s, Run to contours < 2 s; the bounds here only catch a hang, since a
    # shared 2-core CI machine (load average 15-20 while these tests were written) is many times slower
    assert 0 < timings["first_paint_reload_s"] < 20, timings
    assert timings["run_to_contours_s"] < 30, timings
