"""The routes over ASGI (httpx, no server): status codes, error bodies, the request limit, the
admin key, in the predictor role over real checkpoint files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from service.checkpoints import Checkpoint, CheckpointStore
from service.runtime import Runtime
from service.settings import Settings
from tests.unit.conftest import servable_state

ROW = [0.5] * 18
KEY = "route-test-key"


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        role="predictor",
        checkpoint_dir=tmp_path / "checkpoints",
        api_key=KEY,
        max_request_bytes=50_000,
        **extra,  # type: ignore[arg-type]
    )


async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(settings)
    app = create_app(settings, runtime)
    await runtime.start()  # ASGITransport runs no lifespan
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamfit") as client:
            yield client
    finally:
        await runtime.stop()


def run(settings: Settings, scenario) -> None:
    async def main() -> None:
        async for client in client_for(settings):
            await scenario(client)

    asyncio.run(main())


@pytest.fixture
def served(tmp_path: Path, clean_env) -> Settings:
    CheckpointStore(tmp_path / "checkpoints").save(
        Checkpoint(version=2, state=servable_state(), offsets={"t:0": 1000})
    )
    return settings_for(tmp_path)


def test_predict_routes_answer_and_refuse_with_a_reason(served) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/models/susy:predict", json={"instances": [ROW, ROW]})
        assert r.status_code == 200 and r.json()["model_version"] == 2
        assert len(r.json()["predictions"]) == 2 and r.headers["x-request-id"]
        r = await client.post("/v1/models/nope:predict", json={"instances": [ROW]})
        assert r.status_code == 404 and "not found" in r.json()["error"]
        r = await client.post("/v1/models/susy:predict", json={"instances": [[1.0] * 3]})
        assert r.status_code == 422 and "18 numbers" in r.json()["error"]
        r = await client.post("/v1/models/susy:predict", json={"instances": []})
        assert r.status_code == 422 and r.json()["error"].startswith("invalid request")
        r = await client.post(
            "/v1/models/susy:predict", content=b"instances", headers={"content-type": "text/plain"}
        )
        assert r.status_code == 415 and "application/json" in r.json()["error"]
        r = await client.post("/v1/models/susy:predict", json={"instances": [ROW] * 2000})
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        body = {"inputs": [{"name": "x", "shape": [1, 18], "datatype": "FP32", "data": ROW}]}
        r = await client.post("/v2/models/susy/infer", json=body)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 1]

    run(served, scenario)


def test_model_health_and_metrics_routes(served) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        status = (await client.get("/v1/models/susy")).json()["model_version_status"][0]
        assert status == {
            "version": "2",
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
        assert (await client.get("/v2/models/susy")).json()["inputs"][0]["shape"] == [-1, 18]
        model = (await client.get("/model")).json()
        assert model["version"] == 2 and model["checkpoint"]["offsets"] == {"t:0": 1000}
        for path in ("/healthz", "/v2/health/live", "/readyz", "/v2/health/ready"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/lag")).json()["partitions"] == []
        assert (await client.get("/dashboard")).headers["content-type"].startswith("text/html")
        metrics = (await client.get("/metrics")).text
        assert 'streamfit_http_requests_total{method="GET",route="/model",status="200"}' in metrics

    run(served, scenario)


def test_not_ready_without_a_checkpoint(tmp_path, clean_env) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.get("/readyz")
        assert r.status_code == 503 and "waiting for a checkpoint" in r.json()["reason"]
        r = await client.post("/v1/models/susy:predict", json={"instances": [ROW]})
        assert r.status_code == 503 and r.json()["error"] == "no model loaded yet"

    run(settings_for(tmp_path), scenario)


def test_admin_routes_need_the_key_and_a_trainer(served) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.post("/admin/pause")).status_code == 401
        wrong = {"authorization": "Bearer not-the-key"}
        assert (await client.post("/admin/pause", headers=wrong)).status_code == 401
        right = {"authorization": f"Bearer {KEY}"}
        r = await client.post("/admin/pause", headers=right)
        assert r.status_code == 409 and "no trainer in role 'predictor'" in r.json()["error"]
        r = await client.get("/admin/versions", headers=right)
        assert r.status_code == 200 and [v["version"] for v in r.json()["versions"]] == [2]

    run(served, scenario)


def test_admin_refused_when_no_key_is_set(tmp_path, clean_env) -> None:
    settings = Settings(role="predictor", checkpoint_dir=tmp_path / "checkpoints")

    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/admin/checkpoint", headers={"authorization": "Bearer x"})
        assert r.status_code == 403 and "STREAMFIT_API_KEY" in r.json()["error"]

    run(settings, scenario)
