"""Debian's Chromium, headless, driven by selenium through Debian's chromedriver.

Used by the dashboard test and by ``scripts/screenshot_dashboard.py``. The flags keep
Chromium off the network (this machine and CI have none) and out of any user profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: How many plot surfaces a page has drawn (plotly draws two or more per plot).
DRAWN = "return document.querySelectorAll('.js-plotly-plot .main-svg').length"


def chromium(width: int = 1280, height: int = 2400) -> Any:
    """A headless Chromium (selenium WebDriver) that records the page's console.

    Raises:
        AssertionError: If Debian's chromium or chromium-driver is missing.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.is_file(), f"{path} is missing: run make install (Debian chromium)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def load(browser: Any, page: Path, plots: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Open ``page``, wait until ``plots`` plots are drawn; return the console's errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.resolve().as_uri())
    WebDriverWait(browser, timeout).until(lambda b: b.execute_script(DRAWN) >= 2 * plots)
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def upload(browser: Any, component: str, path: Path, timeout: float = 90) -> None:
    """Give ``path`` to the file input of the page component ``#component`` (Gradio).

    Returns when the upload is done: the component shows the file (its name, which Gradio
    breaks over lines) and no longer says "Uploading". A file given while the page is
    still being built can be dropped with the input it was given to: it is given again.
    """
    import time

    def done() -> bool:
        text = browser.find_element("id", component).text
        return path.name in text.replace("\n", "") and "Uploading" not in text

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inputs = browser.find_elements("css selector", f"#{component} input[type=file]")
        if inputs:
            inputs[0].send_keys(str(path))
            shown = time.monotonic() + 20
            while time.monotonic() < min(shown, deadline):
                if done():
                    return
                time.sleep(0.25)
        time.sleep(0.5)
    raise AssertionError(f"the page did not take the upload of {path.name}")


def wait_for(condition: Any, timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition()`` until it holds.

    Raises:
        AssertionError: Naming ``what`` after ``timeout`` seconds.
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
