"""A real browser for the tests (issue 32's status page is tested in one, never a DOM stand-in).

`ensure_installed()` installs Debian's `chromium` and `chromium-driver` packages when the
machine lacks their binaries (idempotent: nothing happens when both are there; the tests
run as root, as CI does). `Browser()` is one headless Chromium driven through Debian's
chromedriver by Selenium, the W3C WebDriver client. Selenium is given both paths, so its
Selenium Manager (which would look a driver up on the network and download it) never runs
(test_browser.py starts a Browser with it made to fail); `SE_OFFLINE` would keep it offline
if a later Selenium ran it anyway.

Chromium runs with a profile of its own in a temporary folder, and its console is read from
the `goog:loggingPrefs` browser log. `close()` ends the session, stops chromedriver and
every Chromium process by pid, waits until each is gone and removes the profile. The
`browser` fixture (conftest.py) shares one Browser between the tests of a module: a start
takes 0.4 to 1.3 s here, a page load tens of milliseconds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import debian
from conftest import wait_for
from supervise import children, gone

PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver"}   # binary: Debian package
WINDOW = (1280, 900)
PAGE_LOAD_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CRASH_HANDLER = "chrome_crashpad_handler"
# Chromium asks every site for /favicon.ico, and logs a 404 as the page's error
FAVICON_FAILED = re.compile(r"^\S+/favicon\.ico - Failed to load resource")
# rows(css): a table or a section stands for its rows, a row for itself
ROWS_OF = """
const matched = Array.from(document.querySelectorAll(arguments[0]));
if (matched.length === 0) return null;
return matched.flatMap(element => element.rows ? Array.from(element.rows) : [element])
    .map(row => Array.from(row.cells || row.children, cell => cell.innerText.trim()));
"""
# Selenium Manager reads its settings from SE_* variables: offline, it never downloads.
os.environ["SE_OFFLINE"] = "true"
# Selenium prefers a chromedriver named here to the path it is given: Debian's it is.
os.environ.pop("SE_CHROMEDRIVER", None)


def ensure_installed() -> tuple[str, str]:
    """The paths of the chromium and chromedriver binaries; installs the Debian packages first
    when either is missing (both in one apt-get; they start no service)."""
    paths = debian.ensure_binaries(PACKAGES)
    return paths["chromium"], paths["chromedriver"]


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children, their children, ...), walked in /proc."""
    found, todo = [], [pid]
    while todo:
        below = children(todo.pop())
        found += below
        todo += below
    return found


def executable(pid: int) -> str:
    """The file name of the program `pid` runs ("" once it is gone)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def chromium_options(chromium: str, profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}",
                 "--no-first-run", "--no-default-browser-check", "--disable-background-networking"):
        options.add_argument(flag)
    # the console's entries at every level, read back by console_errors()
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def chromedriver_service(chromedriver: str, profile: Path) -> Service:
    """A Service on Debian's chromedriver: with a path given, Selenium skips Selenium Manager.
    Chromium's crash handler keeps its reports under the config home, not the profile: it is
    moved into the profile folder (CHROME_CONFIG_HOME) to go with it."""
    return Service(executable_path=chromedriver, env={**os.environ, "CHROME_CONFIG_HOME": str(profile / "config")})


class Browser:
    """One headless Chromium, driven by Selenium through chromedriver."""

    def __init__(self):
        chromium, chromedriver = ensure_installed()
        self.profile = Path(tempfile.mkdtemp(prefix="lb-chromium-"))
        self._log: list[dict] = []
        ours = set(children(os.getpid()))
        try:
            self.driver = webdriver.Chrome(options=chromium_options(chromium, self.profile),
                                           service=chromedriver_service(chromedriver, self.profile))
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)   # Selenium stopped its chromedriver
            raise
        self.driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        self.driver_pid = self.driver.service.process.pid
        # Chromium double-forks its crash handler (chrome_crashpad_handler and its monitor) out
        # of chromedriver's tree; as conftest made this process a subreaper, they are its children.
        self.crash_handler_pids = [pid for pid in sorted(set(children(os.getpid())) - ours)
                                   if executable(pid) == CRASH_HANDLER]
        self.closed = False

    def pids(self) -> list[int]:
        """chromedriver's pid, then Chromium's and its helpers' (zygotes, renderers, GPU, ...),
        and its crash handler's."""
        return [self.driver_pid, *descendants(self.driver_pid), *self.crash_handler_pids]

    def open(self, url: str) -> None:
        """Load `url` and wait for its load event. The console starts afresh: the page before is
        left for about:blank first, so that nothing it logs late is counted for this one."""
        self.driver.get("about:blank")
        self._read_console()
        self._log.clear()
        self.driver.get(url)

    def wait_until(self, predicate: str | Callable[[], object], timeout_s: float, what: str):
        """Poll `predicate` until it is truthy and return its value; AssertionError naming `what`
        after `timeout_s`. A str is a JavaScript expression, evaluated in the page; one that
        throws (an element not there yet) counts as false, a syntax error raises."""
        if isinstance(predicate, str):
            script = f"try {{ return ({predicate}) || false; }} catch (error) {{ return false; }}"
            return wait_for(lambda: self.driver.execute_script(script), timeout_s, what)
        return wait_for(predicate, timeout_s, what)

    def text(self, css: str) -> str:
        """The rendered text of the first element matching `css` (NoSuchElementException if none)."""
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def rows(self, css: str) -> list[list[str]]:
        """The cells' rendered text, row by row. `css` names a table (or its thead, tbody: all
        their rows, header rows included) or the rows themselves ("#nodes tbody tr").
        NoSuchElementException if nothing matches."""
        found = self.driver.execute_script(ROWS_OF, css)
        if found is None:
            raise NoSuchElementException(f"no table matches {css!r}")
        return found

    def console_errors(self) -> list[str]:
        """The page's console errors since open(): console.error() calls, uncaught exceptions
        and rejections, each as Chromium logs it ("URL LINE:COL Uncaught Error: ..."). A
        subresource that failed to load (a 404 script, image or fetch) is logged at the same
        SEVERE level and is in the list too ("URL - Failed to load resource: ... 404").
        Left out: a failed /favicon.ico, which Chromium asks every site for, whether or not
        the page names one."""
        return [entry["message"] for entry in self.console_log()
                if entry["level"] == "SEVERE" and not FAVICON_FAILED.search(entry["message"])]

    def console_log(self) -> list[dict]:
        """Every entry of the page's console since open(), at every level, as chromedriver gives
        them: {"level": "SEVERE"|"WARNING"|"INFO"|..., "message", "source", "timestamp"}."""
        self._read_console()
        return list(self._log)

    def _read_console(self) -> None:
        self._log += self.driver.get_log("browser")    # chromedriver hands each entry over once

    def screenshot(self, path: Path | str) -> Path:
        """A PNG of the viewport written to `path`: WINDOW's width, and less than its height
        (headless Chromium 156 keeps 143 px of a 900 px window for toolbars it does not draw)."""
        assert self.driver.save_screenshot(str(path)), f"no screenshot written to {path}"
        return Path(path)

    def close(self) -> None:
        """End the session, then stop chromedriver and every Chromium process by pid, wait until
        all are gone (AssertionError if one is not), and remove the profile. Idempotent."""
        if self.closed:
            return
        self.closed = True
        tree = self.pids()
        try:
            self.driver.quit()                   # Chromium closes; Selenium stops chromedriver
        except WebDriverException:
            pass                                 # a browser already dead or hung: the signals below
        finally:
            try:
                stop_processes(tree)
            finally:
                shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_processes(pids: list[int]) -> None:
    """SIGTERM to those of `pids` still running, SIGKILL to those left after STOP_TIMEOUT_S;
    returns once every one is gone (reaped when a child of this process)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if not gone(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and not all(gone(pid) for pid in pids):
            time.sleep(0.02)
    left = [pid for pid in pids if not gone(pid)]
    assert not left, f"browser processes still running after SIGKILL: {left}"
