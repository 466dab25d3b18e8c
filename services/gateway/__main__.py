"""``python -m services.gateway``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import uvicorn

from services.common.config import load_settings
from services.common.logging import configure_logging
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=round(settings.grace_seconds),
    )


if __name__ == "__main__":
    main()
