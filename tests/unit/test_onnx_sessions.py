"""Execution-provider selection for every ONNX session (services/common/onnx_sessions.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from prometheus_client import REGISTRY
from pydantic import ValidationError

from services.common import onnx_sessions
from services.common.errors import ConfigurationError
from services.common.onnx_sessions import (
    CPU,
    CUDA,
    TENSORRT,
    ExecutionSettings,
    binding_device,
    open_session,
    provider_options,
    providers_in_use,
    resolve_providers,
)

HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = x + 1 over float32 [n, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "g", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "add.onnx"
    onnx.save(model, str(path))
    return path


def gauge(model: str, provider: str) -> float | None:
    return REGISTRY.get_sample_value(
        "gensearch_onnx_session_info", {"model": model, "provider": provider}
    )


def test_settings_default_to_the_cpu_and_read_short_or_full_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GENSEARCH_ONNX_PROVIDERS", raising=False)
    assert ExecutionSettings().providers == [CPU]
    monkeypatch.setenv("GENSEARCH_ONNX_PROVIDERS", "tensorrt, CUDA,cpu,cuda")
    monkeypatch.setenv("GENSEARCH_ONNX_TRT_FP16", "false")
    settings = ExecutionSettings()
    assert settings.providers == [TENSORRT, CUDA, CPU]  # in order, duplicates dropped
    assert settings.trt_fp16 is False
    monkeypatch.setenv("GENSEARCH_ONNX_PROVIDERS", '["CUDAExecutionProvider", "cpu"]')
    assert ExecutionSettings().providers == [CUDA, CPU]
    monkeypatch.setenv("GENSEARCH_ONNX_PROVIDERS", "gpu")
    with pytest.raises(ValidationError, match="unknown execution provider 'gpu'"):
        ExecutionSettings()


def test_a_missing_provider_fails_with_its_name_and_the_installed_ones() -> None:
    with pytest.raises(ConfigurationError) as err:
        resolve_providers([TENSORRT, CUDA, CPU], [CPU], allow_fallback=False)
    message = str(err.value)
    assert "TensorrtExecutionProvider, CUDAExecutionProvider" in message
    assert "has CPUExecutionProvider" in message and "ALLOW_FALLBACK" in message


def test_fallback_drops_missing_providers_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.common.onnx_sessions"):
        assert resolve_providers([CUDA, CPU], [CPU], allow_fallback=True) == [CPU]
        assert resolve_providers([CUDA], [CPU], allow_fallback=True) == [CPU]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert caplog.records[0].missing == [CUDA]  # type: ignore[attr-defined]
    assert resolve_providers([CUDA, CPU], [CUDA, CPU], allow_fallback=False) == [CUDA, CPU]


def test_provider_options_follow_the_settings() -> None:
    settings = ExecutionSettings(
        providers=["tensorrt"],
        trt_fp16=False,
        trt_engine_cache_dir="/tmp/engines",
        trt_workspace_bytes=2 << 30,
        cuda_device_id=1,
        cuda_mem_limit_bytes=8 << 30,
    )
    assert provider_options(TENSORRT, settings) == {
        "device_id": "1",
        "trt_fp16_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/tmp/engines",
        "trt_max_workspace_size": str(2 << 30),
    }
    assert provider_options(CUDA, settings) == {"device_id": "1", "gpu_mem_limit": str(8 << 30)}
    assert provider_options(CUDA, ExecutionSettings()) == {"device_id": "0"}  # no limit
    assert provider_options(CPU, settings) == {}
    assert binding_device(CUDA, settings) == ("cuda", 1)
    assert binding_device(TENSORRT, settings) == ("cuda", 1)
    assert binding_device(CPU, settings) == ("cpu", 0)


def test_a_cpu_session_is_recorded_logged_and_exported(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="services.common.onnx_sessions"):
        session = open_session(
            model_path, intra_op_threads=1, settings=ExecutionSettings(), model_name="t_cpu"
        )
    (y,) = session.run(None, {"x": np.zeros((2, 3), np.float32)})
    assert np.array_equal(y, np.ones((2, 3), np.float32))
    assert session.get_session_options().intra_op_num_threads == 1
    assert providers_in_use()["t_cpu"] == CPU
    assert gauge("t_cpu", CPU) == 1.0
    [record] = [r for r in caplog.records if r.getMessage() == "onnx session opened"]
    assert record.provider == CPU and record.model == "t_cpu"  # type: ignore[attr-defined]


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_asking_for_cuda_on_the_cpu_wheel(model_path: Path) -> None:
    strict = ExecutionSettings(providers=["cuda", "cpu"])
    with pytest.raises(ConfigurationError, match="CUDAExecutionProvider"):
        open_session(model_path, intra_op_threads=1, settings=strict, model_name="t_strict")
    assert "t_strict" not in providers_in_use()
    lenient = ExecutionSettings(providers=["cuda", "cpu"], allow_fallback=True)
    open_session(model_path, intra_op_threads=1, settings=lenient, model_name="t_lenient")
    assert providers_in_use()["t_lenient"] == CPU


class _FellBack:
    """An InferenceSession stand-in that ends up on the CPU whatever it was asked for
    (what ONNX Runtime does when the CUDA libraries fail to load)."""

    calls: ClassVar[list[Any]] = []

    def __init__(self, path: str, options: Any, providers: Any) -> None:
        type(self).calls.append(providers)

    def get_providers(self) -> list[str]:
        return [CPU]


def test_an_onnx_runtime_fallback_is_caught(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_sessions.ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    monkeypatch.setattr(onnx_sessions.ort, "InferenceSession", _FellBack)
    cache = tmp_path / "trt-cache"
    settings = ExecutionSettings(providers=["tensorrt", "cuda"], trt_engine_cache_dir=str(cache))
    with pytest.raises(ConfigurationError, match="could not start TensorrtExecutionProvider"):
        open_session(model_path, intra_op_threads=2, settings=settings, model_name="t_fell")
    names = [p for p, _ in _FellBack.calls[-1]]
    assert names == [TENSORRT, CUDA]
    assert _FellBack.calls[-1][0][1]["trt_engine_cache_path"] == str(cache)
    assert cache.is_dir()  # created for the engine cache
    lenient = settings.model_copy(update={"allow_fallback": True})
    open_session(model_path, intra_op_threads=2, settings=lenient, model_name="t_fell")
    assert providers_in_use()["t_fell"] == CPU


def test_a_model_reopened_on_another_provider_moves_its_gauge(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_session(model_path, intra_op_threads=1, settings=ExecutionSettings(), model_name="t_move")
    monkeypatch.setattr(onnx_sessions.ort, "get_available_providers", lambda: [CUDA, CPU])

    class OnCuda(_FellBack):
        def get_providers(self) -> list[str]:
            return [CUDA, CPU]

    monkeypatch.setattr(onnx_sessions.ort, "InferenceSession", OnCuda)
    settings = ExecutionSettings(providers=["cuda"])
    open_session(model_path, intra_op_threads=1, settings=settings, model_name="t_move")
    assert providers_in_use()["t_move"] == CUDA
    assert gauge("t_move", CUDA) == 1.0 and gauge("t_move", CPU) == 0.0


def test_the_generator_module_re_exports_session_options() -> None:
    from services.retrieval import onnx_generator

    assert onnx_generator.session_options is onnx_sessions.session_options
    opts = onnx_sessions.session_options(3, allow_spinning=False)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
