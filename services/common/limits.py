"""Request limits that the gateway and the retrieval service must agree on."""

from __future__ import annotations

# Items one search may exclude (explicit ids plus, on request, the user's history).
MAX_EXCLUDE = 1000
# Candidates the gateway asks retrieval for when the ranking stage reorders them (the
# ranker is trained on lists of this length, models_export.ranking.lists).
RANK_POOL = 50
