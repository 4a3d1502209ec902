#!/usr/bin/python3
"""Signs in through moat's login portal with a real, headless Chromium.

    login.py URL USERNAME PASSWORD CODE MARKER

Opens URL (a page behind an `access = "mfa"` service), expects to be sent
to moat's login form, fills in the username, password and TOTP code,
submits, and waits for a page containing MARKER (the device's page). It
prints `LOGIN_URL <url>` once the form is shown, then `FINAL_URL <url>`
and `PAGE_TEXT <json string>`; on failure it prints what it saw to stderr
and exits non-zero. With MOAT_BROWSER_HTTP1=1 in the environment,
Chromium speaks HTTP/1.1 only.

Run with Debian's /usr/bin/python3 (python3-selenium), chromium and
chromedriver from /usr/bin. Nothing is downloaded.
"""

import json
import os
import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60


def body_text(driver):
    """The current page's text, or None while a navigation replaces it.

    An element found on the login page goes stale when the form's POST
    lands on the next page; that is a page in flight, not a failure.
    """
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    url, username, password, code, marker = sys.argv[1:]
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
        # The dev CA is not in Chromium's trust store; the TLS itself is
        # tested elsewhere.
        "--ignore-certificate-errors",
        "--user-data-dir=" + profile,
    ]:
        options.add_argument(arg)
    if os.environ.get("MOAT_BROWSER_HTTP1") == "1":
        # HTTP/1.1 only (ALPN without h2).
        options.add_argument("--disable-http2")
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(WAIT)
        driver.get(url)
        wait = WebDriverWait(
            driver,
            WAIT,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        wait.until(lambda d: d.find_elements(By.NAME, "username"))
        print("LOGIN_URL", driver.current_url, flush=True)
        driver.find_element(By.NAME, "username").send_keys(username)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.NAME, "code").send_keys(code)
        buttons = driver.find_elements(
            By.CSS_SELECTOR, "button[type=submit], input[type=submit], button:not([type])"
        )
        if buttons:
            buttons[0].click()
        else:
            driver.find_element(By.NAME, "code").submit()
        text = wait.until(lambda d: (t := body_text(d)) is not None and marker in t and t)
        print("FINAL_URL", driver.current_url, flush=True)
        print("PAGE_TEXT", json.dumps(text), flush=True)
        return 0
    except (TimeoutException, WebDriverException) as e:
        print("FAILED", type(e).__name__, str(e).splitlines()[0] if str(e) else "", file=sys.stderr)
        if driver is not None:
            try:
                print("AT_URL", driver.current_url, file=sys.stderr)
                print("PAGE_SOURCE", driver.page_source[:4000], file=sys.stderr)
            except WebDriverException:
                pass
        return 1
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
