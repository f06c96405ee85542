"""Scorer process: the follow loop, its model source and its health/metrics server.

What `STREAMFIT_ROLE=scorer` (`streamfit serve`) and `streamfit score --follow` run until
SIGTERM or SIGINT: a `CheckpointFollower` loads the served version (as the predictor role
does), a `StreamScorer` scores with it, and a small HTTP app answers `/healthz`, `/readyz` and
`/metrics` on `SCORE_HTTP_PORT`. A signal stops scoring first (the batch in flight is
committed, the group is left), then the server; the exit status is 0. A loop that fails
exits with status 1, so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from service import __version__
from service.api import health
from service.checkpoints import store_for
from service.loopwatch import LoopWatch
from service.scoring.follow import ScoreJob, StreamScorer
from service.scoring.output import AfterWrite
from service.serving.follower import CheckpointFollower
from service.serving.snapshot import SnapshotHolder
from service.settings import Settings

log = logging.getLogger(__name__)


class ScorerRuntime:
    """The scorer's objects, started and stopped in order; answers readiness."""

    def __init__(
        self, settings: Settings, job: ScoreJob, after_write: AfterWrite | None = None
    ) -> None:
        self.snapshots = SnapshotHolder()
        self.follower = CheckpointFollower(
            store_for(settings), self.snapshots, settings.predictor_reload_s
        )
        self.scorer = StreamScorer(settings, job, self.snapshots, after_write)
        self.loopwatch = LoopWatch()
        self.started_at = time.time()

    async def start(self) -> None:
        self.loopwatch.start()
        await self.follower.start()
        await self.scorer.start()

    async def stop(self) -> None:
        await self.scorer.stop()
        await self.follower.stop()
        await self.loopwatch.stop()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready once a model is loaded and the loop has joined its group."""
        snapshot = self.snapshots.current
        body: dict[str, Any] = {"role": "scorer", "scorer": self.scorer.status()}
        if snapshot is None:
            reason = self.follower.not_ready_reason()
        elif not self.scorer.subscribed:
            reason = "subscribing to the input topic"
        else:
            return True, {"status": "ready", "model_version": snapshot.version, **body}
        return False, {"status": "not ready", "reason": reason, **body}


def create_scorer_app(runtime: ScorerRuntime) -> FastAPI:
    """Liveness, readiness and metrics of a scorer (the service's own health router)."""
    app = FastAPI(title="streamfit scorer", version=__version__)
    app.include_router(
        health.router(health.HealthEndpoints(runtime, runtime.loopwatch, runtime.started_at))
    )
    return app


def serve_scorer(settings: Settings, job: ScoreJob, after_write: AfterWrite | None = None) -> int:
    """Run a scorer until SIGTERM/SIGINT (exit status 0) or a failure of its loop (1)."""
    return asyncio.run(run_scorer(settings, job, after_write))


async def run_scorer(settings: Settings, job: ScoreJob, after_write: AfterWrite | None) -> int:
    runtime = ScorerRuntime(settings, job, after_write)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = _Server(
        uvicorn.Config(
            create_scorer_app(runtime),
            host=settings.http_host,
            port=settings.score_http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve(), name="streamfit-scorer-http")
    status = 0
    try:
        try:
            await runtime.start()
        except Exception as exc:  # Kafka unreachable, a refused transaction mode, ...
            log.error("start-up failed: %s: %s", type(exc).__name__, exc)
            return 1
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, runtime.scorer.finished}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if runtime.scorer.finished.done():
            error = runtime.scorer.finished.exception()
            log.error("scoring failed: %s: %s", type(error).__name__, error)
            status = 1
        else:
            log.info("stopping: finishing the batch in flight, then leaving the group")
    finally:
        await runtime.stop()
        server.should_exit = True
        await serving
    return status


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the scorer stops scoring first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
