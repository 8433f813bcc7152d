"""The status page in a real browser (issue 32): Chromium from Debian's package, driven by
Selenium (tests/e2e/browser.py installs both when missing). Ten nodes behind lb, users sending
requests, a drain through the admin socket and a deploy: the page loads with no console error,
shows the ten nodes, shows the drain within 2 s, and its chart draws and moves.
LB_STATUS_SCREENSHOT=path keeps the screenshot taken mid-deploy (docs/status.png is one)."""

from __future__ import annotations

import asyncio
import os
import shutil

from lb.demo.users import Users

from conftest import Lb, wait_for_requests
from test_deploy import FAST, Deploy

STATE_OF = "return [...document.querySelectorAll('#nodes tbody tr')].map(r => [r.dataset.name, " \
           "r.querySelector('[data-key=state]').textContent])"
POINTS_OF = "return [...document.querySelectorAll('#chart polyline')].map(l => [l.dataset.version, " \
            "l.getAttribute('points').split(' ').length, l.getAttribute('points')])"


def status_url(lb: Lb) -> str:
    return f"http://{lb.config['metrics']['listen']}/status"


def states(browser) -> dict[str, str]:
    return dict(browser.driver.execute_script(STATE_OF))


def lines(browser) -> dict[str, tuple[int, str]]:
    return {version: (count, points) for version, count, points in browser.driver.execute_script(POINTS_OF)}


async def until(browser, predicate, timeout_s: float, what: str):
    """browser.wait_until off the event loop: the users keep sending while the test waits."""
    return await asyncio.to_thread(browser.wait_until, predicate, timeout_s, what)


async def test_the_page_in_a_browser_follows_the_pool_and_a_deploy(spawn, detached_backends, tmp_path, browser):
    backends = detached_backends(10)
    lb = spawn(Lb, tmp_path, backends.configs(), workers=1, **FAST)
    async with Users("127.0.0.1", lb.port, slots=10, life=(10, 30), think_s=0.02) as users:
        await wait_for_requests(users, 100)
        await asyncio.to_thread(browser.open, status_url(lb))
        # the first paint is the server's: the ten nodes are there before the script runs again
        assert [row[0] for row in browser.rows("#nodes tbody tr")] == backends.names
        assert browser.text("#nodes caption") == "Nodes" and "Out because" in browser.text("#nodes thead")

        assert lb.ctl("drain web3")["ok"]
        await until(browser, lambda: states(browser)["web3"] in ("draining", "drained"), 2.0,
                           "the drain on the page within 2 s")
        row = next(r for r in browser.rows("#nodes tbody tr") if r[0] == "web3")
        assert row[-1] == f"{states(browser)['web3']} by an operator"      # the reason in words
        assert lb.ctl("ready web3")["ok"]

        await until(browser, lambda: lines(browser).get("v1", (0, ""))[0] >= 3, 10, "the chart's v1 line")
        deploy = await Deploy(lb, "--to", "v2", "--update", backends.update_command(), "--canary", "1",
                              "--batch", "3", "--bake", "1s", "--canary-bake", "2s", "--min-requests", "0").start()
        await deploy.wait_event(lambda e: e["event"] == "bake" and e.get("canary"))
        await until(browser, lambda: "v2" in lines(browser), 10, "a v2 line in the chart once the canary serves")
        before = lines(browser)["v1"][1]
        await until(browser, lambda: lines(browser)["v1"][1] != before, 5, "the chart to move")
        await until(browser, lambda: "Deploy to v2" in browser.text("#deploy"), 5, "the deploy on the page")
        shot = browser.screenshot(tmp_path / "status.png")
        assert await deploy.finish() == 0, deploy.events[-3:]
    await until(browser, lambda: set(states(browser).values()) == {"ready"}, 10, "every node back")
    await until(browser, lambda: "result: done" in browser.text("#deploy"), 10, "the deploy's result")
    assert browser.console_errors() == []
    assert users.failures == []
    if os.environ.get("LB_STATUS_SCREENSHOT"):
        shutil.copy(shot, os.environ["LB_STATUS_SCREENSHOT"])


def test_the_page_says_when_lb_stops_answering_and_comes_back(spawn, tmp_path, browser):
    from conftest import Backend

    lb = spawn(Lb, tmp_path, [spawn(Backend, "web1").config()], workers=1)
    browser.open(status_url(lb))
    first = browser.text("#updated")                     # the server's paint
    browser.wait_until(lambda: browser.text("#updated") not in (first, "") and
                       browser.text("#updated").startswith("As of"), 5, "the script's own redraw")
    assert lb.stop() == 0
    browser.wait_until(lambda: browser.text("#updated").startswith("No answer from lb"), 5, "the page to say so")
    assert "stale" in browser.driver.execute_script("return document.body.className")
    lb._start()                                          # the same config, ports and socket
    browser.wait_until(lambda: browser.text("#updated").startswith("As of"), 15, "the page to follow lb back")


def test_behind_its_token_the_page_drains_a_node_from_its_form(spawn, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from test_status import TOKEN, guarded_lb

    lb = guarded_lb(spawn, tmp_path)
    address = lb.config["metrics"]["listen"]
    browser.open(f"http://ops:{TOKEN}@{address}/status")      # the browser keeps the credentials for the origin
    browser.open(f"http://{address}/status")                  # a page whose own requests carry none in the URL
    browser.wait_until(lambda: browser.text("#updated").startswith("As of"), 5, "the page, authenticated")
    Select(browser.driver.find_element(By.ID, "action-name")).select_by_visible_text("web2")
    Select(browser.driver.find_element(By.ID, "action-kind")).select_by_value("drain")
    browser.driver.find_element(By.CSS_SELECTOR, "#actions button[type=submit]").click()
    browser.wait_until(lambda: browser.text("#action-result") == "Done.", 5, "the form's answer")
    browser.wait_until(lambda: states(browser)["web2"] in ("draining", "drained"), 3, "web2 drained on the page")
    assert lb.server("web2")["state"] in ("draining", "drained")
    assert browser.console_errors() == []
