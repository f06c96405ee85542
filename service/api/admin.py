"""Admin routes: pause, resume, checkpoint, rollback, pin, unpin and versions, behind a bearer
key; on a predictor (no trainer) they answer 409."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from service.api.auth import AdminKey
from service.checkpoints import CheckpointStore
from service.errors import NotTraining
from service.training.trainer import Trainer


class AdminEndpoints:
    """Thin routes over the trainer; `authorize` guards every one of them."""

    def __init__(
        self,
        api_key: str | None,
        role: str,
        store: CheckpointStore,
        trainer: Callable[[], Trainer | None],
    ) -> None:
        self.authorize = AdminKey(api_key)
        self.role = role
        self.store = store
        self._trainer = trainer  # the runtime's trainer, once started

    def trainer(self) -> Trainer:
        trainer = self._trainer()
        if trainer is None or not trainer.learner.ready:
            raise NotTraining(f"no trainer in role {self.role!r} (or not started yet)")
        return trainer

    async def pause(self) -> dict[str, Any]:
        """Stop learning (the consumer stays in its group); predictions go on."""
        return self.trainer().pause()

    async def resume(self) -> dict[str, Any]:
        return self.trainer().resume()

    async def checkpoint(self) -> dict[str, Any]:
        """Write a checkpoint now (and commit its offsets)."""
        trainer = self.trainer()
        written = await trainer.checkpoint()
        return {"written": written is not None, "checkpoint": trainer.checkpoint_info()}

    async def rollback(self, version: int) -> dict[str, Any]:
        """Go back to a retained checkpoint's model; it is saved as a new, higher version."""
        written = await self.trainer().rollback(version)
        return {"rolled_back_to": version, "checkpoint": written.metadata() if written else None}

    async def pin(self, version: int) -> dict[str, Any]:
        """Serve stored `version` until unpinned (whatever the serve policy)."""
        return await self.trainer().pin(version)

    async def unpin(self) -> dict[str, Any]:
        """Back to the serve policy."""
        return await self.trainer().unpin()

    async def versions(self) -> dict[str, Any]:
        """Retained checkpoint versions (from the manifest) with their gate scores, and the
        serve decision (served, pinned, held back and why)."""
        keys = ("version", "created_at", "samples_trained", "offsets")
        manifest = await asyncio.to_thread(self.store.manifest)
        return {
            "versions": [
                {**{k: e.get(k) for k in keys}, "gate": (e.get("extra") or {}).get("gate")}
                for e in manifest["checkpoints"]
            ],
            "serving": manifest.get("serving"),
        }


def router(endpoints: AdminEndpoints) -> APIRouter:
    routes = APIRouter(tags=["admin"], dependencies=[Depends(endpoints.authorize)])
    routes.add_api_route("/admin/pause", endpoints.pause, methods=["POST"])
    routes.add_api_route("/admin/resume", endpoints.resume, methods=["POST"])
    routes.add_api_route("/admin/checkpoint", endpoints.checkpoint, methods=["POST"])
    routes.add_api_route("/admin/rollback/{version}", endpoints.rollback, methods=["POST"])
    routes.add_api_route("/admin/versions", endpoints.versions, methods=["GET"])
    routes.add_api_route("/admin/pin/{version}", endpoints.pin, methods=["POST"])
    routes.add_api_route("/admin/unpin", endpoints.unpin, methods=["POST"])
    return routes
