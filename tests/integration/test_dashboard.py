"""Dashboard: the page at /dashboard of a real service, in headless Chromium.

The service runs as a child process on the real broker and learns records produced by
`produce_synthetic`. Chromium opens the page once and keeps it open; the test reads what the
page shows over the DevTools protocol while it polls, compares it with the service's own
/model, /lag and /history, and sees it follow a new checkpoint version. Needs the `chromium`
binary (Debian/Ubuntu package `chromium`); skipped without it, failed in CI (tests/tools.py).
The DevTools client is `websockets`, which `uvicorn[standard]` installs.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.support import ServiceProcess, produce_synthetic, wait_for
from tests.tools import require_tool

PAGE = Path(__file__).resolve().parents[2] / "service" / "api" / "dashboard.html"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PARTITIONS = 2
# The page polls every 2 s (POLL_MS in dashboard.html); a few polls to catch up.
PAGE_CATCH_UP_S = 15.0

# What the page shows, read in the page itself.
SHOWN = """JSON.stringify((() => {
  const text = (id) => document.getElementById(id).textContent.trim();
  const curve = document.querySelector("#chart-accuracy .series-accuracy");
  return {
    name: text("model-name"), version: text("version"), samples: text("samples"),
    accuracy: text("accuracy"), loss: text("loss"), checkpoint: text("checkpoint"),
    task: text("task"), model: text("model-spec"),
    metrics: [text("metric-first"), text("metric-second")],
    total_lag: text("total-lag"),
    partitions: [...document.querySelectorAll("#partitions tr")]
      .map((tr) => [...tr.cells].slice(0, 5).map((td) => td.textContent)),
    curve_points: curve ? (curve.getAttribute("d").match(/[ML]/g) || []).length : 0,
    checkpoint_marks: document.querySelectorAll("#chart-accuracy path.checkpoint").length,
    live: text("status").startsWith("live"),
    chart_note: curve ? "" : text("chart-accuracy"),
  };
})())"""


class HeadlessPage:
    """One headless Chromium tab on `url`, read over the DevTools protocol; closed on exit."""

    def __init__(self, browser: str, url: str, profile: Path) -> None:
        self.browser = browser
        self.url = url
        self.profile = profile
        self._resources = ExitStack()
        self._socket: Any = None
        self._next_id = 0

    def __enter__(self) -> HeadlessPage:
        try:
            self._open()
        except BaseException:
            self._resources.close()  # the browser too, when it started but cannot be read
            raise
        return self

    def _open(self) -> None:
        from websockets.sync.client import connect

        self.profile.mkdir(parents=True, exist_ok=True)
        browser = subprocess.Popen(
            [
                self.browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",  # Chromium picks one: DevToolsActivePort
                self.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._resources.callback(_stop, browser)
        port_file = self.profile / "DevToolsActivePort"
        port = wait_for(
            lambda: port_file.exists() and port_file.read_text().split("\n")[0],
            30,
            what="Chromium's DevTools port",
        )

        def page_target() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.loads(r.read())
            pages = [t for t in targets if t["type"] == "page" and t["url"] == self.url]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        address = wait_for(page_target, 30, what="the dashboard tab")
        self._socket = self._resources.enter_context(
            connect(address, max_size=None, open_timeout=10)
        )
        wait_for(
            # The tab starts on an empty document, which is "complete" too.
            lambda: self.evaluate(
                'document.readyState == "complete" && !!document.getElementById("version")'
            ),
            30,
            what="the page to load",
        )

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        self._next_id += 1
        request = {
            "id": self._next_id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": True},
        }
        self._socket.send(json.dumps(request))
        while True:  # skip events; answer to this request only
            message = json.loads(self._socket.recv(timeout=10))
            if message.get("id") == self._next_id:
                break
        details = message["result"].get("exceptionDetails")
        assert details is None, details.get("exception", {}).get("description", details)
        return message["result"]["result"].get("value")

    def shown(self) -> dict[str, Any]:
        return json.loads(self.evaluate(SHOWN))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._resources.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def settled(service: ServiceProcess, records: int) -> dict[str, Any]:
    """The /model answer once every record is learned, checkpointed, served and committed."""
    service.wait_trained(records)

    def done() -> dict[str, Any] | None:
        model = service.get("/model")
        checkpoint = model["checkpoint"] or {}
        lag = service.get("/lag")["partitions"]
        served = model["version"] == checkpoint.get("version")
        covered = sum(checkpoint.get("offsets", {}).values()) == records
        committed = len(lag) == PARTITIONS and all(
            p["committed_offset"] == p["log_end_offset"] for p in lag
        )
        return model if served and covered and committed else None

    # Checkpoints come every second (service_factory); the commit follows each one.
    return wait_for(done, 30, what=f"a served, committed checkpoint of {records} records")


def expected(service: ServiceProcess) -> dict[str, Any]:
    """What the page should show, formatted as dashboard.html formats the service's answers."""
    model, lag, history = (service.get(path) for path in ("/model", "/lag", "/history"))
    points = history["points"]
    last = max((p["samples"] for p in points), default=0)
    count = "{:,}".format
    return {
        "name": f"· {model['name']}",
        "version": str(model["version"]),
        "samples": count(model["samples_trained"]),
        "accuracy": f"{model['prequential']['accuracy']:.4f}",
        "loss": f"{model['prequential']['loss']:.4f}",
        "checkpoint": f"v{model['checkpoint']['version']}",
        "task": f"{model['task']} · {', '.join(model['classes'])}",
        "model": f"model {model['model']}",
        "metrics": ["Prequential accuracy", "Prequential log-loss"],
        "total_lag": count(lag["total_lag"]),
        "partitions": [
            [
                f"{p['topic']}:{p['partition']}",
                *(count(p[k]) for k in ("committed_offset", "position", "log_end_offset", "lag")),
            ]
            for p in lag["partitions"]
        ],
        # The curve is /history's points plus the live one when the model is past the last.
        "curve_points": len(points) + (model["samples_trained"] > last),
        "checkpoint_marks": sum(1 for e in history["events"] if e["kind"] == "checkpoint"),
        "live": True,
        "chart_note": "",
    }


def page_catches_up(page: HeadlessPage, want: dict[str, Any]) -> dict[str, Any]:
    """What the page shows once it matches `want`, or a failed comparison after a few polls."""
    deadline = time.monotonic() + PAGE_CATCH_UP_S
    shown = page.shown()
    while shown != want and time.monotonic() < deadline:
        time.sleep(0.25)
        shown = page.shown()
    assert shown == want
    return shown


@pytest.fixture
def browser() -> str:
    """Headless Chromium: skipped without it, failed in CI (tests/tools.py)."""
    return require_tool(*BROWSERS, install="headless Chromium; Debian: apt-get install chromium")


def test_dashboard_shows_the_service_and_follows_new_versions(
    browser: str, broker, topic, service_factory, tmp_path: Path
) -> None:
    produce_synthetic(broker.bootstrap, topic, rows=2500, partitions=PARTITIONS, seed=1)
    service = service_factory().start()
    first = settled(service, 2500)

    with HeadlessPage(browser, f"{service.url}/dashboard", tmp_path / "profile") as page:
        shown = page_catches_up(page, expected(service))
        assert shown["version"] == str(first["version"])
        assert shown["curve_points"] >= 2 and shown["checkpoint_marks"] >= 1, shown
        assert len(shown["partitions"]) == PARTITIONS

        # The open page follows the service: more records, a new checkpoint version.
        produce_synthetic(broker.bootstrap, topic, rows=1500, partitions=PARTITIONS, seed=2)
        second = settled(service, 4000)
        assert second["version"] > first["version"]
        shown = page_catches_up(page, expected(service))
        assert shown["version"] == str(second["version"]) and shown["samples"] == "4,000"
        assert shown["partitions"][0][3] == "2,000", "log-end offset of partition 0"


def test_dashboard_of_a_predictor_without_a_checkpoint(
    browser: str, service_factory, tmp_path: Path
) -> None:
    """Nothing to show yet (no model, no history, no partitions): the page still works."""
    predictor = service_factory(role="predictor").start(wait_ready=False)
    wait_for(lambda: predictor.status("/healthz") == 200, 60, what="predictor alive")
    assert predictor.status("/readyz") == 503

    with HeadlessPage(browser, f"{predictor.url}/dashboard", tmp_path / "profile") as page:
        wait_for(lambda: page.shown()["live"], PAGE_CATCH_UP_S, what="the page to poll")
        shown = page.shown()
    assert shown["version"] == "–" and shown["samples"] == "0", shown
    assert shown["curve_points"] == 0 and shown["chart_note"] == "no history yet", shown
    assert shown["partitions"] == [["no partitions assigned"]], shown


def test_dashboard_is_self_contained() -> None:
    html = PAGE.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    assert "innerHTML" not in html  # API data goes in as text, never as markup


class CannedService:
    """The dashboard page and fixed /model, /lag and /history answers over HTTP on a free
    loopback port: what the page shows of a task without starting a service."""

    def __init__(self, answers: dict[str, Any]) -> None:
        import http.server
        import threading

        page = PAGE.read_bytes()
        bodies = {f"/{path}": json.dumps(answer).encode() for path, answer in answers.items()}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                body = page if self.path == "/dashboard" else bodies.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                kind = "text/html" if body is page else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CannedService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


REGRESSION_SHOWN = """JSON.stringify((() => {
  const text = (id) => document.getElementById(id).textContent.trim();
  const top = document.querySelector("#chart-accuracy .series-mae");
  const bottom = document.querySelector("#chart-loss .series-rmse");
  return {
    task: text("task"), model: text("model-spec"), accuracy: text("accuracy"),
    loss: text("loss"), metrics: [text("metric-first"), text("metric-second")],
    legend: [text("legend-first"), text("legend-second")],
    top_points: top ? (top.getAttribute("d").match(/[ML]/g) || []).length : 0,
    bottom_points: bottom ? (bottom.getAttribute("d").match(/[ML]/g) || []).length : 0,
  };
})())"""


def test_dashboard_of_a_regression_model(browser: str, tmp_path: Path) -> None:
    """A regression task: MAE and RMSE by name, the model spec and its feature names."""
    points = [
        {"samples": s, "mae": 60.0 - s / 100, "rmse": 75.0 - s / 100, "time": 1.7e9}
        for s in (1000, 2000, 3000)
    ]
    answers = {
        "model": {
            "name": "diabetes",
            "version": 3,
            "samples_trained": 3500,
            "batches_trained": 14,
            "updated_at": 1.7e9,
            "checkpoint": {"version": 3, "created_at": 1.7e9, "offsets": {}},
            "prequential": {"mae": 31.25, "rmse": 40.5},
            "task": "regression",
            "classes": [],
            "model": "mlp",
            "features": ["age", "sex", "bmi"],
        },
        "lag": {"group_id": "g", "partitions": [], "total_lag": 0},
        "history": {"every": 1000, "points": points, "events": []},
    }
    with (
        CannedService(answers) as canned,
        HeadlessPage(browser, f"{canned.url}/dashboard", tmp_path / "profile") as page,
    ):
        want = {
            "task": "regression",
            "model": "model mlp · features age, sex, bmi",
            "accuracy": "31.2500",
            "loss": "40.5000",
            "metrics": ["Prequential MAE", "Prequential RMSE"],
            "legend": ["MAE", "RMSE"],
            "top_points": 4,  # three history points and the live one
            "bottom_points": 4,
        }
        deadline = time.monotonic() + PAGE_CATCH_UP_S
        shown = json.loads(page.evaluate(REGRESSION_SHOWN))
        while shown != want and time.monotonic() < deadline:
            time.sleep(0.25)
            shown = json.loads(page.evaluate(REGRESSION_SHOWN))
        assert shown == want
