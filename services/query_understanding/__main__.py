"""``python -m services.query_understanding``: the query-understanding gRPC service."""

from __future__ import annotations

from services.common.config import load_settings
from services.common.grpc_server import serve
from services.common.logging import configure_logging
from services.query_understanding.config import QueryUnderstandingSettings
from services.query_understanding.loader import load_understander
from services.query_understanding.server import QueryUnderstandingApp


def main() -> None:
    settings = load_settings(QueryUnderstandingSettings)
    configure_logging("query_understanding", settings.log_level)
    serve("query_understanding", QueryUnderstandingApp(settings, load_understander), settings)


if __name__ == "__main__":
    main()
