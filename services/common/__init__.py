"""Shared runtime for every gensearch service: config, logging, gRPC server/client, artifacts."""
