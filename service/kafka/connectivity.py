"""Connectivity: a probe that asks Kafka for metadata every second, so an outage shows.

aiokafka retries connection errors inside `getmany()` and a hung broker only times out after
`request_timeout_ms` (40 s), so an empty poll says nothing about Kafka; a metadata request with
a short deadline does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from service.tasks import OwnedTask

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 3.0


class ConnectivityProbe:
    """Reports `on_reachable()` or `on_unreachable(error)` after each probe of `consumer`.

    The task is owned here: `start()` creates it, `stop()` cancels it.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        on_reachable: Callable[[], None],
        on_unreachable: Callable[[BaseException], None],
    ) -> None:
        self.consumer = consumer
        self.on_reachable = on_reachable
        self.on_unreachable = on_unreachable
        self._task = OwnedTask("streamfit-kafka-probe", self._run)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await asyncio.wait_for(self.consumer.topics(), timeout=PROBE_TIMEOUT_S)
            except TimeoutError as exc:
                self.on_unreachable(
                    exc if str(exc) else TimeoutError("no metadata from Kafka within 3 s")
                )
            except (KafkaError, OSError) as exc:
                self.on_unreachable(exc)
            else:
                self.on_reachable()
