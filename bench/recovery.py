"""Recovery: cold start, and kill -9 to ready and to training again.

Each trial starts a service with no checkpoint on a filled topic (cold start: launch ->
HTTP up -> ready -> first trained batch), lets it write a checkpoint (every 2 s here), kills it
with SIGKILL mid-stream, and starts it again at once on the same checkpoint directory and
group (kill -> HTTP up -> ready -> first trained batch after restart). It then lets the service
finish the topic and checks the exactly-once count: samples_trained == records in the topic.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import time
from typing import Any

from bench.report import SummaryRow, fmt_s, table
from bench.stack import BenchSession, Service, poll_until
from bench.stats import summarize

NAME = "recovery"
TITLE = "Recovery and start-up"
CHECKPOINT_INTERVAL_S = 2
POLL_S = 0.02
KEYS = ("http_up_s", "ready_s", "group_joined_s", "first_batch_s", "longest_answer_s")


def _get(service: Service, path: str, starting: bool = False) -> tuple[int, Any] | None:
    """(status, body) of GET path on a fresh connection; None while nothing listens.

    `starting` (until the first answer): a reset counts as nothing listening too. Just after a
    kill -9 the killed trainer's HTTP worker can still hold the port for a moment (the kernel
    ends it with its parent) and resets the connections it had queued."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    except ConnectionRefusedError:
        return None
    except ConnectionResetError:
        if starting:
            return None
        raise
    finally:
        connection.close()
    return response.status, json.loads(body) if body.startswith(b"{") else None


def _milestones(service: Service, since: float) -> dict[str, Any]:
    """Seconds from `since` to: HTTP answers, /readyz 200, a batch beyond the checkpoint's.

    One request at a time, each allowed to wait as long as it needs, so a stalled event loop
    shows as a slow answer (`longest_answer_s`) instead of a timeout. The restored sample
    count is the sum of the restored checkpoint's offsets (every record is valid).
    """
    marks: dict[str, Any] = {}
    restored: int | None = None
    slowest = 0.0
    deadline = time.perf_counter() + 300
    while "first_batch_s" not in marks:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no trained batch 300 s after start: {marks}")
        path = "/healthz" if "http_up_s" not in marks else "/readyz"
        if "ready_s" in marks:
            path = "/model"
        sent = time.perf_counter()
        answer = _get(service, path, starting="http_up_s" not in marks)
        now = time.perf_counter()
        if answer is None:
            time.sleep(POLL_S)
            continue
        slowest = max(slowest, now - sent)
        status, body = answer
        if path == "/healthz" and status == 200:
            marks["http_up_s"] = now - since
        elif path == "/readyz" and status == 200:
            marks["ready_s"] = now - since
        elif path == "/model" and body:
            if restored is None:
                checkpoint = body.get("checkpoint") or {}
                restored = sum(int(v) for v in (checkpoint.get("offsets") or {}).values())
                marks["restored_samples"] = restored
            if int(body["samples_trained"]) > restored:
                marks["first_batch_s"] = now - since
        time.sleep(POLL_S)
    marks["longest_answer_s"] = slowest
    return marks


def _consuming_at(service: Service, after_wall: float) -> float | None:
    """Wall time of the service's first "consuming" log line after `after_wall`, if logged.

    The trainer logs it once its consumer has started, i.e. has joined the group and got
    its partitions (aiokafka's `start()` waits for the assignment).
    """
    for line in service.logs().splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") != "consuming":
            continue
        stamp = dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        if stamp >= after_wall:
            return stamp
    return None


def trial(session: BenchSession, topic: str, rows: int) -> dict[str, Any]:
    service = session.service(topic, checkpoint_interval_s=CHECKPOINT_INTERVAL_S)
    launched, launched_wall = time.perf_counter(), time.time()
    service.start(wait_ready=False)
    cold = _milestones(service, launched)
    consuming = _consuming_at(service, launched_wall)
    cold["group_joined_s"] = consuming - launched_wall if consuming else float("nan")
    poll_until(lambda: service.model()["checkpoint"], 120, 0.05, "a checkpoint")
    time.sleep(0.5)  # kill between checkpoints, mid-stream
    learned_at_kill = service.samples_trained()
    if learned_at_kill >= rows:
        raise RuntimeError("the topic was learned before the kill; use more records")
    killed, killed_wall = time.perf_counter(), time.time()
    service.kill()
    service.start(wait_ready=False)
    restarted_s = time.perf_counter() - killed
    after_kill = _milestones(service, killed)
    consuming = _consuming_at(service, killed_wall)
    after_kill["group_joined_s"] = consuming - killed_wall if consuming else float("nan")
    restored = int(after_kill["restored_samples"])
    final, _ = poll_until(
        lambda: (m := service.model())["samples_trained"] >= rows and m, 300, 0.1, "all records"
    )
    service.stop()
    return {
        "cold": cold,
        "after_kill": after_kill,
        "respawn_s": restarted_s,
        "learned_at_kill": learned_at_kill,
        "restored_samples": restored,
        "relearned_after_kill": learned_at_kill - restored,
        "final_samples": int(final["samples_trained"]),
        "exactly_once": int(final["samples_trained"]) == rows,
    }


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    trials = 1 if quick else 3
    rows = 100_000 if quick else 150_000
    topic = session.new_topic("recovery")
    session.produce(topic, rows, seed=41)
    results = [trial(session, topic, rows) for _ in range(trials)]

    def stat(phase: str, key: str) -> dict[str, float]:
        return summarize([r[phase][key] for r in results])

    return {
        "rows": rows,
        "trials": results,
        "cold": {k: stat("cold", k) for k in KEYS},
        "after_kill": {k: stat("after_kill", k) for k in KEYS},
        "exactly_once": all(r["exactly_once"] for r in results),
    }


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    c, k = result["cold"], result["after_kill"]
    return [
        SummaryRow(
            "kill -9 -> ready / -> first trained batch",
            f"{fmt_s(k['ready_s']['p50'])} / {fmt_s(k['first_batch_s']['p50'])} (median)",
            "—",
            None,
        ),
        SummaryRow(
            "cold start -> ready / -> first trained batch",
            f"{fmt_s(c['ready_s']['p50'])} / {fmt_s(c['first_batch_s']['p50'])} (median)",
            "—",
            None,
        ),
    ]


def render(result: dict[str, Any]) -> str:
    def row(label: str, stats: dict[str, dict[str, float]]) -> list[str]:
        return [label] + [
            f"{fmt_s(stats[k]['p50'])} ({fmt_s(stats[k]['min'])}–{fmt_s(stats[k]['max'])})"
            for k in KEYS
        ]

    trials = result["trials"]
    relearned = ", ".join(f"{t['relearned_after_kill']:,}" for t in trials)
    return "\n".join(
        [
            f"{len(trials)} trial(s) on a {result['rows']:,}-record topic, checkpoints every "
            f"{CHECKPOINT_INTERVAL_S} s; times are median (min–max), polled every "
            f"{POLL_S * 1e3:.0f} ms, one request at a time with no client timeout (*slowest "
            "answer* is the longest any of those requests waited: an event-loop stall). Cold start "
            "counts from launching `python -m service serve`; after kill -9 from the SIGKILL "
            "(the new process is launched at once).",
            "",
            table(
                [
                    "",
                    "HTTP answers",
                    "/readyz 200",
                    "consumer in its group (from the log)",
                    "first trained batch",
                    "slowest answer meanwhile",
                ],
                [row("cold start", result["cold"]), row("after kill -9", result["after_kill"])],
            ),
            "",
            "Between ready and the first trained batch the consumer joins its group: aiokafka's "
            "`start()` waits for the partition assignment, and the broker decides how long that "
            "takes (a new group, a member that left or died; see the notes).",
            "",
            f"Records learned after the last checkpoint and so learned again after the restart: "
            f"{relearned} (by design: the model resumes from the checkpoint). Exactly-once "
            f"count after finishing the topic (samples_trained == records): "
            f"**{'yes' if result['exactly_once'] else 'NO'}**.",
        ]
    )
