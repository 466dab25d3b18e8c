"""Request limits that the gateway and the retrieval service must agree on."""

from __future__ import annotations

# Items one search may exclude (explicit ids plus, on request, the user's history).
MAX_EXCLUDE = 1000
