"""Settings shared by every service (pydantic-settings, one env prefix per service)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("../shared/data")
DATA_DIR_ENV = "GENSEARCH_DATA_DIR"
ARTIFACT_DIR_ENV = "GENSEARCH_ARTIFACT_DIR"


def data_dir() -> Path:
    """The shared data directory: ``$GENSEARCH_DATA_DIR`` or ``../shared/data``."""
    return Path(os.environ.get(DATA_DIR_ENV, str(DEFAULT_DATA_DIR)))


def artifact_root() -> Path:
    """The artifact repository: ``$GENSEARCH_ARTIFACT_DIR`` or ``./artifacts``."""
    return Path(os.environ.get(ARTIFACT_DIR_ENV, "artifacts"))


class ServiceSettings(BaseSettings):
    """Knobs every gRPC service has. Subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(env_prefix="GENSEARCH_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(..., ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 disables it."
    )
    artifact_dir: Path = Field(default_factory=artifact_root)
    artifact_version: str = Field("", description="Version to load; empty means CURRENT.")
    grace_seconds: float = Field(5.0, ge=0, description="Drain time for in-flight calls.")
    default_deadline_seconds: float = Field(
        2.0, gt=0, description="Deadline applied to calls that arrive without one."
    )
    max_concurrent_rpcs: int = Field(256, ge=1)
    intra_op_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads.")
    log_level: str = "INFO"


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Instantiate settings from the environment; exit with a clear message if invalid."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {cls.__name__}:"]
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {prefix}{name.upper()}: {err['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
