"""The browser harness itself (tests/e2e/browser.py), not lb: Debian's Chromium, driven by
Selenium, on tiny pages served by an http.server thread on 127.0.0.1. It reads a page's text
and table, catches console errors and uncaught exceptions, waits on a change a page script
makes later, writes a valid PNG, and leaves no process behind when closed."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from selenium.common.exceptions import JavascriptException, NoSuchElementException
from selenium.webdriver.common.selenium_manager import SeleniumManager

import browser as browser_module
from supervise import children

PAGES = {
    "/table.html": """<h1 id="title">Servers</h1>
        <table id="servers">
          <thead><tr><th>name</th><th>state</th></tr></thead>
          <tbody><tr><td>web1</td><td>ready</td></tr><tr><td> web2 </td><td>drain</td></tr></tbody>
        </table>""",
    "/clean.html": """<p id="said">nothing wrong</p><script>console.log("fine"); console.warn("only a warning")</script>""",
    "/console-error.html": """<script>console.error("status page: bad answer")</script>""",
    "/uncaught.html": """<script>null.boom()</script><script>throw new Error("thrown by the page")</script>""",
    "/missing-script.html": """<script src="/nowhere.js"></script>""",
    "/late.html": """<p id="state">loading</p>
        <script>setTimeout(() => { document.getElementById("state").textContent = "ready" }, 800)</script>""",
}


class PageHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        page = PAGES.get(self.path)
        body = f"<!doctype html><html><body>{page}</body></html>".encode() if page else b"not found"
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_pages():
    """The pages' base URL: a server on a free port of 127.0.0.1, in a thread of this process."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def site():
    with serve_pages() as url:
        yield url


def test_a_page_is_loaded_and_its_text_and_table_rows_are_read(browser, site):
    browser.open(f"{site}/table.html")
    assert browser.text("#title") == "Servers"
    assert browser.rows("#servers") == [["name", "state"], ["web1", "ready"], ["web2", "drain"]]
    assert browser.rows("#servers tbody") == [["web1", "ready"], ["web2", "drain"]]
    assert browser.rows("#servers tbody tr") == [["web1", "ready"], ["web2", "drain"]]


def test_reading_what_is_not_on_the_page_fails(browser, site):
    browser.open(f"{site}/table.html")
    with pytest.raises(NoSuchElementException):
        browser.rows("#no-such-table")
    with pytest.raises(NoSuchElementException):
        browser.text("#no-such-element")


def test_a_clean_page_has_no_console_errors(browser, site):
    browser.open(f"{site}/console-error.html")           # errors of the page before are not counted
    browser.open(f"{site}/clean.html")
    assert browser.text("#said") == "nothing wrong"
    assert browser.console_errors() == []


def test_chromiums_own_favicon_request_is_not_a_page_error(browser):
    """Chromium asks a site it has not seen for /favicon.ico, and logs the 404 at SEVERE."""
    with serve_pages() as new_site:
        browser.open(f"{new_site}/clean.html")
        browser.wait_until(lambda: [e for e in browser.console_log() if "/favicon.ico" in e["message"]], 10,
                           "the browser's request for /favicon.ico to fail")
        assert browser.console_errors() == []


def test_console_error_is_caught(browser, site):
    browser.open(f"{site}/console-error.html")
    [error] = browser.console_errors()
    assert "status page: bad answer" in error
    assert browser.console_errors() == [error], "a second read still has it"


def test_uncaught_exceptions_are_caught(browser, site):
    browser.open(f"{site}/uncaught.html")
    errors = browser.console_errors()
    assert len(errors) == 2, errors
    assert "Uncaught TypeError" in errors[0] and "boom" in errors[0]
    assert "Uncaught Error: thrown by the page" in errors[1]


def test_a_missing_subresource_is_a_console_error_too(browser, site):
    browser.open(f"{site}/missing-script.html")
    [error] = browser.console_errors()
    assert "/nowhere.js" in error and "404" in error


def test_wait_until_sees_a_change_a_page_script_makes_later(browser, site):
    browser.open(f"{site}/late.html")
    assert browser.text("#state") == "loading"             # the change is still to come
    browser.wait_until("document.getElementById('state').textContent === 'ready'", 10, "the state to be ready")
    assert browser.text("#state") == "ready"


def test_wait_until_takes_a_callable_and_returns_its_value(browser, site):
    browser.open(f"{site}/late.html")
    assert browser.wait_until(lambda: browser.text("#state") == "ready" and "seen", 10, "ready") == "seen"


def test_wait_until_fails_naming_what_it_waited_for(browser, site):
    browser.open(f"{site}/late.html")
    with pytest.raises(AssertionError, match="a state that never comes"):
        browser.wait_until("document.getElementById('nowhere').textContent === 'x'", 0.3, "a state that never comes")


def test_wait_until_raises_on_a_script_that_does_not_parse(browser, site):
    browser.open(f"{site}/late.html")
    with pytest.raises(JavascriptException, match="Unexpected token"):
        browser.wait_until("document.(", 5, "a typo")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks (type, data), each CRC checked; AssertionError if it is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def test_a_screenshot_is_a_valid_png_of_the_viewport(browser, site, tmp_path):
    browser.open(f"{site}/table.html")
    path = browser.screenshot(tmp_path / "page.png")
    chunks = png_chunks(path.read_bytes())
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height = struct.unpack(">II", chunks[0][1][:8])
    # the viewport: the window (WINDOW) less the 143 px headless Chromium keeps for its toolbars
    assert [width, height] == browser.driver.execute_script("return [innerWidth, innerHeight]")
    assert width == browser_module.WINDOW[0]
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(set(pixels)) > 2, "the page is drawn, not one flat colour"


def profile_users(profile) -> list[int]:
    """The processes, anywhere on the machine, whose command line names the profile folder:
    Chromium and each of its helpers carry --user-data-dir."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if str(profile).encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_close_leaves_no_process_of_the_browser(site, monkeypatch):
    """A Browser of its own, started with Selenium Manager made to fail: it is never asked."""
    def no_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager was run")
    monkeypatch.setattr(SeleniumManager, "binary_paths", no_manager)
    ours = set(children(os.getpid()))
    own = browser_module.Browser()
    own.open(f"{site}/table.html")
    pids = own.pids()
    assert len(pids) >= 3, f"chromedriver, Chromium and its helpers: {pids}"
    assert len(own.crash_handler_pids) == 2, "chrome_crashpad_handler and its monitor"
    assert set(profile_users(own.profile)) <= set(pids[1:]), "every Chromium process is under chromedriver"
    own.close()
    left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert left == [], f"still running after close: {left}"
    assert profile_users(own.profile) == []
    # what Chromium double-forks out of the tree comes to this process (conftest made it a subreaper)
    assert set(children(os.getpid())) - ours == set(), "a process of the browser outside chromedriver's tree"
    assert not own.profile.exists()
    own.close()                                            # a second close does nothing
