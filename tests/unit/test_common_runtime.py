"""Unit tests of the shared runtime pieces (no sockets)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from services.common.artifacts import ArtifactRepository, set_current, write_manifest
from services.common.config import ServiceSettings, load_settings
from services.common.deadline import Deadline
from services.common.errors import (
    ArtifactIntegrityError,
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
)
from services.common.grpc_client import retry_service_config
from services.common.interceptors import _split_method
from services.common.logging import configure_logging, request_id_var


def test_deadline_budget_and_check() -> None:
    deadline = Deadline.after(0.5)
    assert 0.4 < deadline.remaining() <= 0.5
    assert deadline.timeout("x") > 0
    half = deadline.sub_budget(0.5)
    assert half.remaining() < deadline.remaining()
    expired = Deadline.after(-0.01)
    assert expired.expired
    with pytest.raises(DeadlineExceededError, match="ranking"):
        expired.check("ranking")
    with pytest.raises(DeadlineExceededError):
        expired.timeout("retrieval")
    with pytest.raises(ValueError):
        deadline.sub_budget(0.0)


def test_deadline_from_grpc_remaining_uses_default_when_none() -> None:
    assert 1.9 < Deadline.from_remaining(None, 2.0).remaining() <= 2.0
    assert Deadline.from_remaining(0.1, 2.0).remaining() <= 0.1


def _make_version(root: Path, version: str = "v1") -> Path:
    vdir = root / version
    (vdir / "sub").mkdir(parents=True)
    (vdir / "a.bin").write_bytes(b"abc")
    (vdir / "sub" / "b.json").write_text('{"x": 1}')
    write_manifest(vdir, version, {"seed": 7}, {"recall@10": 0.5})
    return vdir


def test_artifacts_round_trip_and_current(tmp_path: Path) -> None:
    _make_version(tmp_path, "v1")
    _make_version(tmp_path, "v2")
    repo = ArtifactRepository(tmp_path)
    assert repo.versions() == ["v1", "v2"]
    assert repo.current() == "v2"
    set_current(tmp_path, "v1")
    arts = repo.open()
    assert arts.version == "v1"
    assert arts.read_json("sub/b.json") == {"x": 1}
    assert arts.manifest.config == {"seed": 7}
    assert arts.manifest.eval == {"recall@10": 0.5}
    assert len(arts.manifest_sha256) == 64
    arts.verify()


def test_artifacts_refuse_tampered_file(tmp_path: Path) -> None:
    vdir = _make_version(tmp_path)
    (vdir / "a.bin").write_bytes(b"abd")
    arts = ArtifactRepository(tmp_path).open("v1")
    with pytest.raises(ArtifactIntegrityError, match=r"'a.bin' sha256 mismatch"):
        arts.path("a.bin")
    assert arts.read_json("sub/b.json") == {"x": 1}


def test_artifacts_refuse_missing_unlisted_and_unknown(tmp_path: Path) -> None:
    vdir = _make_version(tmp_path)
    (vdir / "sub" / "b.json").unlink()
    arts = ArtifactRepository(tmp_path).open("v1")
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        arts.path("sub/b.json")
    with pytest.raises(ArtifactIntegrityError, match="not listed"):
        arts.path("other.bin")
    with pytest.raises(NotFoundError):
        ArtifactRepository(tmp_path).open("v9")
    with pytest.raises(NotFoundError):
        ArtifactRepository(tmp_path / "empty").open()
    with pytest.raises(NotFoundError):
        ArtifactRepository(tmp_path).open("../v1")


def test_artifacts_refuse_bad_manifest(tmp_path: Path) -> None:
    vdir = _make_version(tmp_path)
    (vdir / "manifest.json").write_text('{"version": "v1"}')
    with pytest.raises(ArtifactIntegrityError, match="not a valid manifest"):
        ArtifactRepository(tmp_path).open("v1")
    (vdir / "manifest.json").write_text('{"version": "other", "files": {}}')
    with pytest.raises(ArtifactIntegrityError, match="does not match directory"):
        ArtifactRepository(tmp_path).open("v1")


class _Needy(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NEEDY_", extra="ignore", frozen=True)
    upstream: str


def test_settings_fail_fast_with_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NEEDY_PORT", raising=False)
    monkeypatch.delenv("NEEDY_UPSTREAM", raising=False)
    with pytest.raises(SystemExit) as exc:
        load_settings(_Needy)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "NEEDY_PORT" in err and "NEEDY_UPSTREAM" in err
    monkeypatch.setenv("NEEDY_PORT", "5000")
    monkeypatch.setenv("NEEDY_UPSTREAM", "127.0.0.1:1")
    monkeypatch.setenv("NEEDY_GRACE_SECONDS", "1.5")
    settings = load_settings(_Needy)
    assert settings.port == 5000 and settings.grace_seconds == 1.5


def test_retry_config_only_names_given_services() -> None:
    config = json.loads(retry_service_config(["a.v1.A"], max_attempts=4))
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "a.v1.A"}]
    assert method["retryPolicy"]["maxAttempts"] == 4
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_split_method() -> None:
    assert _split_method("/gensearch.retrieval.v1.RetrievalService/Retrieve") == (
        "RetrievalService",
        "Retrieve",
    )


def test_json_logs_carry_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("unit", "INFO")
    token = request_id_var.set("req-42")
    try:
        logging.getLogger("t").info("hello", extra={"stage": "x"})
    finally:
        request_id_var.reset(token)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "hello"
    assert record["request_id"] == "req-42"
    assert record["service"] == "unit"
    assert record["stage"] == "x"
    assert record["level"] == "INFO"


def test_errors_carry_status_codes() -> None:
    import grpc

    assert InvalidInputError.code == grpc.StatusCode.INVALID_ARGUMENT
    assert DeadlineExceededError.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ArtifactIntegrityError.code == grpc.StatusCode.FAILED_PRECONDITION
