"""``python -m services.retrieval``: the generative retrieval gRPC service."""

from __future__ import annotations

from services.common.config import load_settings
from services.common.grpc_server import serve
from services.common.logging import configure_logging
from services.retrieval.config import RetrievalSettings
from services.retrieval.loader import load_engine
from services.retrieval.server import RetrievalApp


def main() -> None:
    settings = load_settings(RetrievalSettings)
    configure_logging("retrieval", settings.log_level)
    serve("retrieval", RetrievalApp(settings, load_engine), settings)


if __name__ == "__main__":
    main()
