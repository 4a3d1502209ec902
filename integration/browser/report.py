#!/usr/bin/python3
"""Renders a moat evidence report (an HTML file) in a real, headless Chromium.

    report.py FILE

Loads file://FILE, then prints one JSON object: the page title, the
device headings (h2), the size of every inline SVG chart, the browser's
console entries at level SEVERE, and every resource the page loaded
(there should be none besides the file itself), the number of
script and img elements, and the page's text. Exits non-zero when the
browser cannot load the page.

Run with Debian's /usr/bin/python3 (python3-selenium), chromium and
chromedriver from /usr/bin. Nothing is downloaded.
"""

import json
import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    profile = tempfile.mkdtemp(prefix="moat-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1200,2000",
        "--user-data-dir=" + profile,
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(60)
        driver.get("file://" + path)
        charts = [
            {"width": r["width"], "height": r["height"]}
            for r in (
                driver.execute_script(
                    "const b = arguments[0].getBoundingClientRect();"
                    "return {width: b.width, height: b.height};",
                    svg,
                )
                for svg in driver.find_elements(By.CSS_SELECTOR, "svg")
            )
        ]
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        severe = [
            e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
        ]
        print(
            json.dumps(
                {
                    "url": driver.current_url,
                    "title": driver.title,
                    "headings": [h.text for h in driver.find_elements(By.TAG_NAME, "h2")],
                    "charts": charts,
                    "severe": severe,
                    "resources": resources,
                    "scripts": len(driver.find_elements(By.TAG_NAME, "script")),
                    "images": len(driver.find_elements(By.TAG_NAME, "img")),
                    "text": driver.find_element(By.TAG_NAME, "body").text,
                }
            )
        )
        return 0
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
