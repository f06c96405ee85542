"""API: the HTTP layer. `app` assembles; one router per protocol or concern (`v1`, `v2`,
`model`, `health`, `admin`) over the data plane; `errors` maps domain errors to status codes;
`middleware` adds request ids, the body limit and HTTP metrics."""

from service.api.app import create_app

__all__ = ["create_app"]
