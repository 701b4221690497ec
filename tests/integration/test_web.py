"""The controller's web view on a real cluster: its JSON over HTTPS, its rules (GET only, CSP 'self', client
certificates), and one real headless chromium watching a job move, finish and fail."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zchelpers import Cluster, running, wait_for, write_file

from zcrepl.core.types import Endpoint, JobOptions

SIZE = 8 << 20
RATE = 2 << 20  # bytes/s: about four seconds of visible progress, several page refreshes
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-view.png"
SCREENSHOT_MAX = 200 << 10
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A controller serving the view on a free loopback port, and two agents; shared by this module."""
    base = tmp_path_factory.mktemp("web")
    with running(Cluster(base, http_listen="127.0.0.1:0")) as c:
        yield c


def tls(cluster: Cluster, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """Verifies the controller against the cluster CA (by certificate, not name: it is dialled by address)."""
    ctx = ssl.create_default_context(cafile=cluster.pki.ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def request(address: str, path: str, ctx: ssl.SSLContext | None, method: str = "GET"
            ) -> tuple[int, http.client.HTTPMessage, bytes]:
    host, port = address.rsplit(":", 1)
    conn = (http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10) if ctx is not None
            else http.client.HTTPConnection(host, int(port), timeout=10))
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def state(cluster: Cluster, page: int = 0) -> dict[str, Any]:
    status, headers, body = request(cluster.controller.ready["http"], f"/api/state?page={page}", tls(cluster))
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


def served_certificate(address: str, cluster: Cluster) -> bytes:
    """The certificate the view presents (DER), to an operator."""
    host, port = address.rsplit(":", 1)
    ctx = tls(cluster, cluster.pki.issue("operator", "viewer", "read"))
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der
    return der


def failing_job(cluster: Cluster) -> tuple[int, str]:
    """A job whose source does not exist: it fails on its only attempt. (id, its error)"""
    base = cluster.base
    with cluster.client() as c:
        job = c.submit(Endpoint("hostA", str(base / "a" / "missing").encode()),
                       Endpoint("hostB", str(base / "b" / "never").encode()), JobOptions(max_attempts=1))
        wait_for(lambda: c.job(job.id).state.final, what="the job to fail")
        return job.id, c.job(job.id).error


def test_state_over_https_lists_hosts_and_a_failed_job(web: Cluster) -> None:
    address = web.controller.ready["http"]
    assert web.controller.ready["http_url"] == f"https://{address}/"
    doc = wait_for(lambda: (d := state(web))["hosts"]["items"] and
                   all(h["health"] for h in d["hosts"]["items"]) and d, what="both hosts' health in the view")
    assert doc["summary"]["agents"] == {"total": 2, "online": 2, "offline": 0, "attention": 0}
    assert [(h["name"], h["online"]) for h in doc["hosts"]["items"]] == [("hostA", True), ("hostB", True)]
    assert doc["hosts"]["items"][0]["health"]["mem_total"] > 0
    assert doc["hosts"]["items"][0]["history"]["cpu"], "no sparkline samples"

    job_id, error = failing_job(web)
    assert error
    failed = wait_for(lambda: [j for j in state(web)["failed"]["items"] if j["id"] == job_id],
                      what="the failed job in the view")
    assert failed[0]["error"] == error and failed[0]["source"].startswith("hostA:")
    assert state(web)["summary"]["jobs"]["failed"] >= 1

    # Page numbers past the end show the last page; a page that is not a number is refused in one sentence.
    assert state(web, page=99)["hosts"]["page"] == 0
    status, _, body = request(address, "/api/state?page=x", tls(web))
    assert status == 400 and b"page number" in body


def test_the_view_is_read_only_and_loads_nothing_from_elsewhere(web: Cluster) -> None:
    address = web.controller.ready["http"]
    for path in ("/", "/app.js", "/style.css", "/favicon.svg", "/api/state"):
        status, headers, body = request(address, path, tls(web))
        assert status == 200 and body, path
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
    page = request(address, "/", tls(web))[2].decode()
    assert "http:" not in page and "https:" not in page and "//" not in page.replace("<!--", "")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = request(address, "/api/state", tls(web), method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    assert request(address, "/static/../../etc/passwd", tls(web))[0] == 404
    # The port speaks TLS only: a plaintext request gets no page.
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        request(address, "/", None)


def test_required_client_certificates_let_in_operators_only(web: Cluster, tmp_path: Path) -> None:
    """http_client_cert = required: no certificate, no handshake; an agent's certificate, a 403 that says what
    to do; any operator role, the view. A renewed server certificate is served without a restart."""
    from zcrepl.controller.daemon import Controller
    from zcrepl.core import pki
    from zcrepl.core.config import ControllerConfig

    ca = web.pki.ca
    cert, key = tmp_path / "controller.pem", tmp_path / "controller.key"
    for src, dst in zip(web.pki.issue("controller", "controller"), (cert, key), strict=True):
        shutil.copy(src, dst)
    crl = tmp_path / "crl.pem"
    shutil.copy(web.pki.crl, crl)
    cfg = ControllerConfig(listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                           ca=ca, cert=str(cert), key=str(key), crl=str(crl),
                           http_listen="127.0.0.1:0", http_client_cert="required")
    with Controller(cfg) as c:
        address = c.http_address
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(address, "/api/state", tls(web))
        status, _, body = request(address, "/api/state", tls(web, web.pki.issue("agent", "hostA")))
        assert status == 403 and b"operator certificate" in body
        status, headers, body = request(address, "/api/state", tls(web, web.pki.issue("operator", "viewer", "read")))
        assert status == 200 and json.loads(body)["summary"]["agents"]["total"] == 0
        assert headers["Content-Security-Policy"] == CSP

        # Both picked up within a second or two, without a restart: a revoked operator, a renewed certificate.
        gone = web.pki.issue("operator", "gone", "read")
        assert request(address, "/api/state", tls(web, gone))[0] == 200
        before = served_certificate(address, web)
        renewed = web.pki.issue("controller", "controller-renewed")
        pki.write_crl(crl, pki.CA.load(web.pki.dir), {pki.load_cert(Path(gone[0]).read_bytes()).serial_number:
                                                      time.time()})
        for src, dst in zip(renewed, (cert, key), strict=True):
            shutil.copy(src, dst)
        wait_for(lambda: request(address, "/api/state", tls(web, gone))[0] == 403,
                 what="the revoked operator to be refused")
        assert b"revoked" in request(address, "/", tls(web, gone))[2]
        wait_for(lambda: served_certificate(address, web) != before, what="the renewed certificate on the view")


def test_a_browser_sees_hosts_progress_done_and_a_failure(web: Cluster, tmp_path: Path) -> None:
    webdriver, options, service = _chromium()
    src, dst = web.base / "a" / "big", web.base / "b" / "big-copy"
    src.mkdir()
    write_file(src / "payload", os.urandom(SIZE))
    failed_id, error = failing_job(web)
    with web.client() as c:  # an hour away: it stays "never run" for the whole test
        nightly = c.create_schedule(Endpoint("hostA", str(src).encode()), Endpoint("hostB", str(dst).encode()),
                                    JobOptions(), every=3600)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        url = web.controller.ready["http_url"]
        driver.get(url)

        def text(selector: str) -> str | None:
            """The element's text, read in the page's own thread: rows are redrawn every second, so an element
            found by one WebDriver call may be gone by the next."""
            found: str | None = driver.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector)
            return found

        def hosts() -> list[list[str]]:
            found: list[list[str]] = driver.execute_script(
                "return [...document.querySelectorAll('#hosts tbody tr')].map(r => [r.id, r.dataset.online]);")
            return found

        wait_for(lambda: hosts() == [["host-hostA", "true"], ["host-hostB", "true"]], what="two online hosts")
        row = wait_for(lambda: text(f"#failed #job-{failed_id}"), what="the failed job on the page")
        assert error[:60] in row
        row = wait_for(lambda: text(f"#schedules #schedule-{nightly.id}"), what="the schedule on the page")
        assert "every 1h" in row and "never run" in row and f"hostA:{src} → hostB:{dst}" in row
        due = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(nightly.next_due))
        assert f"{due} (in " in row

        with web.client() as c:
            job = c.submit(Endpoint("hostA", str(src).encode()), Endpoint("hostB", str(dst).encode()),
                           JobOptions(bwlimit=RATE))

            def percent() -> float:
                found: float = driver.execute_script(
                    "const b = document.querySelector(arguments[0]); return b ? Number(b.dataset.percent) : -1;",
                    f"#running #job-{job.id} .bar")
                return found

            # Same destination: it waits for the first, with the scheduler's reason on the page.
            second = c.submit(Endpoint("hostA", str(src).encode()), Endpoint("hostB", str(dst).encode()),
                              JobOptions())
            seen: list[float] = []

            def moved() -> bool:
                p = percent()
                if 0 < p < 100 and (not seen or p > seen[-1]):
                    seen.append(p)
                return len(seen) >= 2

            wait_for(moved, what="the job's progress bar to show two growing values")
            # Before the scheduler's next pass the row says it waits for that pass; then it gives the reason.
            wait_for(lambda: "is writing to" in (text(f"#waiting #job-{second.id} .reason") or ""),
                     what="the second job's wait reason on the page")
            if percent() < 90:  # while it runs, with a waiting and a failed job: what README shows
                _screenshot(driver, tmp_path)
            c.cancel(second.id)
        wait_for(lambda: text(f"#finished #job-{job.id}[data-state=done]"), timeout=60,
                 what="the job to reach done on the page")
        assert text(f"#running #job-{job.id}") is None

        origin = url.rstrip("/")
        requested = [m["params"]["request"]["url"] for m in _performance(driver)
                     if m["method"] == "Network.requestWillBeSent"]
        assert {f"{origin}/app.js", f"{origin}/style.css"} <= set(requested)
        assert any(u.startswith(f"{origin}/api/state") for u in requested)
        foreign = [u for u in requested if not u.startswith(origin + "/")]
        assert not foreign, f"the page asked another origin for {foreign}"
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
        with web.client() as c:
            c.schedule_action("remove", nightly.id)


def _chromium() -> tuple[Any, Any, Any]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("chromium and chromedriver are missing: apt-get install chromium chromium-driver "
                    "(.ci/run does it on CI)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # Root in a container: no sandbox. The cluster CA is not in the browser's store; the other tests check the
    # certificate, this one the page.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--ignore-certificate-errors", "--window-size=1200,860", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver, options, Service(executable_path=driver)


def _performance(driver: Any) -> list[dict[str, Any]]:
    return [json.loads(e["message"])["message"] for e in driver.get_log("performance")]


def _screenshot(driver: Any, tmp_path: Path) -> None:
    """Saved under the test's directory; ZC_WEB_SCREENSHOT=1 also writes docs/web-view.png (README shows it)."""
    png = driver.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] >= 800
    assert len(png) < SCREENSHOT_MAX, f"the screenshot is {len(png) >> 10} KiB; keep it under 200 KiB"
    (tmp_path / "web-view.png").write_bytes(png)
    if os.environ.get("ZC_WEB_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)


def test_an_insecure_controller_serves_plain_http_to_addresses_only(tmp_path: Path) -> None:
    """No TLS, no certificate: plain HTTP, and a Host that is a name (DNS rebinding) is refused."""
    from zcrepl.controller.daemon import Controller
    from zcrepl.core.config import ControllerConfig

    cfg = ControllerConfig(listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                           insecure=True, http_listen="127.0.0.1:0")
    with Controller(cfg) as c:
        assert c.http_url == f"http://{c.http_address}/"
        status, headers, _ = request(c.http_address, "/api/state", None)
        assert status == 200 and headers["Content-Security-Policy"] == CSP
        host, port = c.http_address.rsplit(":", 1)
        for name, allowed in ((f"localhost:{port}", True), (f"[::1]:{port}", True),
                              (f"attacker.example:{port}", False), ("attacker.example", False)):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request("GET", "/api/state", headers={"Host": name})
                r = conn.getresponse()
                body = r.read()
            finally:
                conn.close()
            assert (r.status == 200) is allowed, (name, r.status, body)
            if not allowed:
                assert r.status == 403 and b"open the view by address" in body
