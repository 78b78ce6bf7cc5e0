"""Browser test: a reviewer in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
opens mitmweb, sees the held request with its reason, clicks Resume, and the client gets its answer.

`./run_gateway.sh test` installs Debian's chromium when it is missing; this test never downloads a
browser. It fails (does not skip) without /usr/bin/chromium, so that CI always runs it.
"""

from __future__ import annotations

import os
import time

from approvals_web import reached, send, wait_held
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_reviewer_resumes_held_flow_in_mitmweb(web, approvals_upstream, pool, tmp_path):
    assert os.access(CHROMIUM, os.X_OK), "Debian chromium is missing: ./run_gateway.sh test installs it"
    fut = send(pool, web, "POST", "/admin/browser", json={"op": "drop"})
    held = wait_held(web, "/admin/browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{web.web_port}/?token={web.client.password}")
            row = page.locator(".flow-table tbody tr", has_text="/admin/browser")
            expect(row).to_have_count(1, timeout=15000)
            expect(row).to_contain_text("writes to admin endpoints need a human")  # comment column
            assert "intercepted" in (row.get_attribute("class") or "")
            row.click()
            page.get_by_role("link", name="Comment").or_(page.get_by_text("Comment", exact=True)).last.click()
            expect(page.locator(".flow-detail")).to_contain_text(
                "HELD for approval by rule 'admin-writes': writes to admin endpoints need a human")
            page.screenshot(path=str(tmp_path / "held.png"))
            assert not fut.done() and reached(approvals_upstream, "/admin/browser") == 0
            t0 = time.monotonic()
            page.get_by_role("button", name="Resume").first.click()
            r, t1 = fut.result(10)
            print(f"\nbrowser Resume click -> upstream response at the client: {(t1 - t0) * 1000:.0f} ms")
            expect(row).not_to_have_class("intercepted", timeout=5000)
            page.screenshot(path=str(tmp_path / "resumed.png"))
        finally:
            browser.close()
    assert r.status_code == 200 and r.json()["path"] == "/admin/browser"
    assert reached(approvals_upstream, "/admin/browser") == 1
    assert held["rule"] == "admin-writes"
