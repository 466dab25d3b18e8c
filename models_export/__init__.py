"""Offline pipeline: ingest, derived queries, embeddings, semantic IDs, artifact builds."""
