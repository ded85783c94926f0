"""A page opened in real headless Chromium (Debian's chromium and chromedriver, driven by
selenium): whether its images decode, what the console complained about (CSP violations
included), and a full-page screenshot to look at."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_LOAD_SECONDS = 30
MAX_SCREENSHOT_HEIGHT = 12000  # a runaway page must not ask Chromium for a gigapixel bitmap


@dataclass(frozen=True)
class PageReport:
    images: list[tuple[str, int]]  # (alt, or the first 40 characters of src; naturalWidth) per <img>
    broken: list[str]  # images that did not decode: naturalWidth 0 or not complete
    console_errors: list[str]  # browser log entries of level SEVERE, CSP violations among them
    title: str
    screenshot: Path


def missing() -> str | None:
    """Why a page cannot be inspected here, or None when it can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (apt-get install {package})"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    return None


def available() -> bool:
    return missing() is None


def inspect_page(path: Path, screenshot: Path, width: int = 1280) -> PageReport:
    """Open `path` (a local HTML file) in headless Chromium, report on its images and console,
    and save a screenshot of the whole page to `screenshot`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
        driver.get(Path(path).resolve().as_uri())
        WebDriverWait(driver, PAGE_LOAD_SECONDS).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        found = driver.execute_script(
            "return Array.from(document.images, i => [i.alt || (i.getAttribute('src') || '').slice(0, 40),"
            " i.naturalWidth, i.complete]);")
        # the window's outer size is what can be set; the page needs its viewport to be that tall
        chrome_height = driver.execute_script("return window.outerHeight - window.innerHeight;")
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(width, min(height, MAX_SCREENSHOT_HEIGHT) + max(chrome_height, 0))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        return PageReport(images=[(name, int(natural)) for name, natural, _ in found],
                          broken=[name for name, natural, complete in found if not natural or not complete],
                          console_errors=errors, title=driver.title, screenshot=screenshot)
    finally:
        driver.quit()
