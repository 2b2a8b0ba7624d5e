"""The status page in a real browser: headless Chromium (Debian's chromium + chromium-driver) via Selenium.

A file chosen in the drop zone's file input and one dropped on the zone are uploaded, followed
until done, shown before/after with a slider; the screenshot is kept as a test artefact
(tests/artifacts/, or $SRWATCH_ARTIFACTS). Where Chromium or its driver is missing the test
skips, except under CI=true, where `make test` (system-test-deps) must have installed them.
"""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from daemon_harness import FAST_WATCH, REPO, Drop, Layout, assert_invariant, image_bytes, running, wait_for
from web_harness import free_port, request, wait_http

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("SRWATCH_ARTIFACTS", REPO / "tests" / "artifacts"))
WAIT = 60  # in seconds: for a page element to appear (the daemon's work included)


def require(what: str, found) -> None:
    """Skip without `found`, but fail under CI=true (like tests/test_systemd_unit.py's require_tool)."""
    if not found:
        message = f"{what} is not installed (`make system-test-deps` installs chromium and chromium-driver with apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def browser():
    """A headless Chromium driven through the distribution's chromedriver (no download, no network)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require("selenium (the test extra)", None)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    require("chromium", chromium)
    require("chromedriver (package chromium-driver)", driver_path)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1600", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path)
    return webdriver.Chrome(service=service, options=options), service


DROP_FILE = """
const [name, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: "image/png"}));
document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
"""

UPLOAD_STATE = """
return [...document.querySelectorAll("#uploads li")].map((li) => {
  const imgs = [...li.querySelectorAll(".compare img")];
  return {name: li.querySelector("[data-field=name]").textContent, state: li.dataset.state,
          status: li.querySelector("[data-field=status]").textContent,
          loaded: imgs.length === 2 && imgs.every((img) => img.complete && img.naturalWidth > 0),
          shown: !li.querySelector(".compare").hidden};
});
"""


def test_browser_uploads_and_sees_before_after(layout: Layout, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    chosen = tmp_path / "browser-photo.png"
    chosen.write_bytes(image_bytes(64, 48, seed=21))
    dropped = image_bytes(40, 30, seed=22)
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    with running(layout, watch=FAST_WATCH, metrics={"listen": f"127.0.0.1:{port}"}) as daemon:
        wait_http(base)
        driver, service = browser()
        try:
            driver.get(base)
            file_input = driver.find_element(By.ID, "file-input")
            file_input.send_keys(str(chosen))
            driver.execute_script(DROP_FILE, "dropped.png", base64.b64encode(dropped).decode())

            def both_done() -> bool:
                rows = driver.execute_script(UPLOAD_STATE)
                return len(rows) == 2 and all(r["state"] == "done" and r["loaded"] and r["shown"] for r in rows)
            try:
                wait_for(both_done, WAIT, 0.25, "both uploads done with their before/after loaded")
            except AssertionError:
                raise AssertionError(f"{driver.execute_script(UPLOAD_STATE)}\n{daemon.log()[-3000:]}") from None
            rows = {r["name"]: r for r in driver.execute_script(UPLOAD_STATE)}
            assert set(rows) == {"browser-photo.png", "dropped.png"}
            assert "browser-photo_x3.png" in rows["browser-photo.png"]["status"]

            # The slider uncovers "after" from the right: moving it moves the clip.
            sliders = driver.find_elements(By.CSS_SELECTOR, "#uploads .compare input[type=range].slider")
            assert len(sliders) == 2
            clip = driver.execute_script(
                "const c = arguments[0].closest('.compare'); const s = c.querySelector('.slider');"
                "s.value = 20; s.dispatchEvent(new Event('input'));"
                "return c.querySelector('img.after').style.clipPath;", sliders[0])
            assert clip.replace(" ", "") == "inset(0px0px0px20%)", clip
            # The page's own list of outputs shows them too, with their previews.
            wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#done-list .compare:not([hidden]) img.after")) == 2,
                     WAIT, 0.25, "the last outputs listed with previews")
            assert driver.find_element(By.CSS_SELECTOR, "#chart g.bar rect.done") is not None

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "status-page.png"
            assert driver.save_screenshot(str(shot)), "no screenshot"
            print(f"\nstatus page screenshot: {shot}")
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"the page logged errors: {errors}"
        finally:
            driver.quit()
            service.stop()
        assert request(base + "api/status").json()["totals"]["done"] == 2
        assert daemon.stop() == 0
    assert layout.files(layout.outbox) == ["browser-photo_x3.png", "dropped_x3.png"]
    assert_invariant(layout, [Drop("browser-photo.png", chosen.read_bytes(), size=(64, 48)),
                              Drop("dropped.png", dropped, size=(40, 30))])
