"""Dashboard: the static page renders /model, /lag and /history in headless Chromium.

The page is what is under test, so a stub HTTP server serves it with canned JSON (the routes'
shapes from SPEC.md, /history from LearningHistory.state()). Needs the `chromium` binary
(Debian/Ubuntu package `chromium`); skipped without it, or failed in CI (tests/tools.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.tools import require_tool

PAGE = Path(__file__).resolve().parents[2] / "service" / "dashboard.html"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def model_json(version: int) -> dict[str, Any]:
    return {
        "name": "susy",
        "version": version,
        "samples_trained": 123_456,
        "batches_trained": 483,
        "updated_at": 1.7e9,
        "checkpoint": {"version": version, "created_at": 1.7e9, "offsets": {"t:0": 61_728}},
        "prequential": {"accuracy": 0.78125, "loss": 0.45678},
    }


LAG = {
    "group_id": "streamfit",
    "topic": "susy-train",
    "partitions": [
        {
            "topic": "susy-train",
            "partition": p,
            "committed_offset": 61_000,
            "position": 61_728,
            "log_end_offset": 61_728 + 100 * p,
            "lag": 100 * p,
            "status": "OK" if p == 0 else "WARN",
            "lag_seconds": 0.5 * p,
        }
        for p in (0, 1)
    ],
    "total_lag": 100,
}

HISTORY = {
    "every": 1000,
    "points": [
        {
            "samples": s,
            "accuracy": 0.6 + 0.15 * s / 120_000,
            "loss": 0.7 - 0.2 * s / 120_000,
            "time": 1.7e9,
        }
        for s in range(1000, 121_000, 1000)
    ],
    "events": [
        {"samples": 30_720, "kind": "checkpoint", "time": 1.7e9, "version": 1},
        {"samples": 61_440, "kind": "drift", "time": 1.7e9, "onset": 60_900},
        {"samples": 92_160, "kind": "checkpoint", "time": 1.7e9, "version": 2},
    ],
}


class StubApi:
    """The page at /dashboard plus canned JSON; /model answers version 41 first, then 42."""

    def __init__(self, history_status: int = 200) -> None:
        self.requests: Counter[str] = Counter()
        self.history_status = history_status

    def respond(self, path: str) -> tuple[int, str, bytes]:
        self.requests[path] += 1
        if path == "/dashboard":
            return 200, "text/html; charset=utf-8", PAGE.read_bytes()
        if path == "/model":
            body: Any = model_json(41 if self.requests[path] == 1 else 42)
        elif path == "/lag":
            body = LAG
        elif path == "/history" and self.history_status == 200:
            body = HISTORY
        elif path == "/history":
            return self.history_status, "application/json", b'{"detail": "Not Found"}'
        else:
            return 404, "text/plain", b"not found"
        return 200, "application/json", json.dumps(body).encode()


@pytest.fixture
def serve() -> Iterator[Callable[[StubApi], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(api: StubApi) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, kind, payload = api.respond(self.path.split("?")[0])
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/dashboard"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def dump_dom(browser: str, url: str, profile: Path) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class ById(HTMLParser):
    """Text content and attributes of every element with an id; counts of SVG classes."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.classes: Counter[str] = Counter()
        self.paths: dict[str, str] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in (a.get("class") or "").split():
            self.classes[name] += 1
            if tag == "path" and name.startswith("series-"):
                self.paths[name] = a.get("d") or ""
        element_id = a.get("id")
        if element_id:
            self.text.setdefault(element_id, "")
        if tag not in ("line", "path", "br", "meta", "i", "input"):
            self._open.append(element_id)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("line", "path", "br", "meta", "i", "input") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.text[element_id] += data


def parse(dom: str) -> ById:
    parser = ById()
    parser.feed(dom)
    return parser


@pytest.fixture
def browser() -> str:
    return require_tool(*BROWSERS, install="headless Chromium; Debian: apt-get install chromium")


def test_dashboard_shows_live_numbers_and_the_learning_curve(
    browser: str, serve: Callable[[StubApi], str], tmp_path: Path
) -> None:
    api = StubApi()
    dom = dump_dom(browser, serve(api), tmp_path / "profile")
    page = parse(dom)
    # Polled more than once, and shows the newest answer.
    assert api.requests["/model"] >= 2 and api.requests["/history"] >= 2, api.requests
    assert page.text["version"].strip() == "42"
    assert page.text["accuracy"].strip() == "0.7813"
    assert page.text["accuracy-pct"].strip() == "78.1 %"
    assert page.text["loss"].strip() == "0.4568"
    assert page.text["samples"].strip() == "123,456"
    assert page.text["checkpoint"].strip() == "v42"
    assert page.text["total-lag"].strip() == "100"
    assert page.text["lag-status"].strip() == "WARN"
    rows = page.text["partitions"]
    assert "susy-train:0" in rows and "susy-train:1" in rows and "61,828" in rows
    # The curve: 120 history points plus the live one, a drift line in each panel,
    # checkpoint marks on the accuracy panel.
    for series in ("series-accuracy", "series-loss"):
        assert len(re.findall(r"[ML]\d", page.paths[series])) == 121, series
    assert page.classes["drift"] == 2
    assert page.classes["checkpoint"] == 2
    assert "1 drift event" in page.text["history-note"]
    assert page.text["status"].startswith("live")


def test_dashboard_keeps_working_without_history(
    browser: str, serve: Callable[[StubApi], str], tmp_path: Path
) -> None:
    api = StubApi(history_status=404)
    page = parse(dump_dom(browser, serve(api), tmp_path / "profile"))
    assert page.text["version"].strip() == "42"
    assert page.text["accuracy"].strip() == "0.7813"
    assert "cannot read history" in page.text["status"]
    # The live point still draws.
    assert len(re.findall(r"[ML]\d", page.paths["series-accuracy"])) == 1


def test_dashboard_is_self_contained() -> None:
    html = PAGE.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    assert "innerHTML" not in html  # API data goes in as text, never as markup
