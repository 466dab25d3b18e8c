"""``python -m services.rag_rerank``: the RAG rerank gRPC service."""

from __future__ import annotations

from services.common.config import load_settings
from services.common.grpc_server import serve
from services.common.logging import configure_logging
from services.rag_rerank.config import RagRerankSettings
from services.rag_rerank.loader import load_reranker
from services.rag_rerank.server import RagRerankApp


def main() -> None:
    settings = load_settings(RagRerankSettings)
    configure_logging("rag_rerank", settings.log_level)
    serve("rag_rerank", RagRerankApp(settings, load_reranker), settings)


if __name__ == "__main__":
    main()
