"""``python -m services.ranking``: the ranking gRPC service."""

from __future__ import annotations

from services.common.config import load_settings
from services.common.grpc_server import serve
from services.common.logging import configure_logging
from services.ranking.config import RankingSettings
from services.ranking.loader import load_ranker
from services.ranking.server import RankingApp


def main() -> None:
    settings = load_settings(RankingSettings)
    configure_logging("ranking", settings.log_level)
    serve("ranking", RankingApp(settings, load_ranker), settings)


if __name__ == "__main__":
    main()
