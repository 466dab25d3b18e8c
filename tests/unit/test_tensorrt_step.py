"""The TensorRT pipeline step on a machine without TensorRT: the skip, the profiles, and the
whole step driven through a stand-in ``trtexec``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from models_export import pipeline, tensorrt_step
from models_export.pipeline import BuildContext, BuildSettings
from models_export.tensorrt_step import (
    SKIPPED,
    ServedShapes,
    dim_range,
    input_profiles,
    retrieval_settings,
    served_shapes,
    step_tensorrt,
    trtexec_command,
)
from services.retrieval.encoding import EncodingConfig

ENCODING = EncodingConfig(codebook_sizes=(256, 2048, 256, 256), n_words=10)


def context(root: Path) -> BuildContext:
    ctx = BuildContext(None, root, "v1", BuildSettings.for_mode(True), {})  # type: ignore[arg-type]
    ctx.version_dir.mkdir(parents=True)
    return ctx


def test_the_step_is_last_and_left_out_of_quick_builds() -> None:
    assert pipeline.STEPS[-1] == ("tensorrt", "models_export.tensorrt_step:step_tensorrt")
    assert "tensorrt" in pipeline.QUICK_SKIPS


def test_without_tensorrt_the_step_skips_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensorrt_step, "tensorrt_module_present", lambda: False)
    monkeypatch.setattr(tensorrt_step.shutil, "which", lambda name: None)
    ctx = context(tmp_path)
    assert step_tensorrt(ctx) == SKIPPED
    assert "tensorrt" not in ctx.config
    assert not (ctx.version_dir / "trt").exists()


def test_profiles_cover_the_served_batch_and_beam_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENSEARCH_RETRIEVAL_MAX_BATCH_SIZE", raising=False)
    monkeypatch.delenv("GENSEARCH_RETRIEVAL_MAX_BEAM_WIDTH", raising=False)
    monkeypatch.delenv("GENSEARCH_RETRIEVAL_DEFAULT_BEAM_WIDTH", raising=False)
    shapes = served_shapes(retrieval_settings(), ENCODING, 256)
    assert shapes == ServedShapes(
        max_batch=16, opt_batch=8, max_beam=128, opt_beam=20, max_source=46, depth=4,
        max_pairs=32, max_tokens=256,
    )  # fmt: skip
    assert dim_range("queries", shapes) == (1, 8, 16)
    assert dim_range("beams", shapes) == (1, 20, 128)
    assert dim_range("hypotheses", shapes) == (1, 160, 16 * 128)
    assert dim_range("past_rows", shapes) == (1, 160, 16 * 128)
    assert dim_range("source", shapes) == (1, 23, 46)
    assert dim_range("steps", shapes) == (0, 1, 3)  # the cache never holds the last level
    assert dim_range("seq", shapes) == (1, 128, 256)
    with pytest.raises(ValueError, match="'tokens_total'"):
        dim_range("tokens_total", shapes)
    profile = input_profiles(
        [("tokens", ["queries", "beams"]), ("past_key_0", ["past_rows", 2, "steps", 8])], shapes
    )
    assert profile["tokens"] == ([1, 1], [8, 20], [16, 128])
    assert profile["past_key_0"] == ([1, 2, 0, 8], [160, 2, 1, 8], [2048, 2, 3, 8])
    with pytest.raises(ValueError, match="unnamed"):
        input_profiles([("x", [None, 3])], shapes)


def test_the_served_sizes_follow_the_retrieval_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("GENSEARCH_RETRIEVAL_DEFAULT_BEAM_WIDTH", "100")
    shapes = served_shapes(retrieval_settings(), ENCODING, 128)
    assert dim_range("queries", shapes) == (1, 8, 64)
    assert dim_range("beams", shapes) == (1, 100, 128)
    assert dim_range("hypotheses", shapes)[2] == 64 * 128


def _graph(path: Path, inputs: list[tuple[str, list[object]]]) -> None:
    """An ONNX graph with these (float) inputs and one output per input (Identity)."""
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs]
    outs = [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, d) for n, d in inputs]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _ in inputs]
    model = helper.make_model(
        helper.make_graph(nodes, "g", values, outs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


FAKE_TRTEXEC = """#!/bin/sh
echo "$@" >> "{log}"
for arg in "$@"; do
  case "$arg" in --saveEngine=*) printf engine > "${{arg#--saveEngine=}}" ;; esac
done
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v110400] [b106]"
"""


def test_the_step_builds_engines_through_trtexec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = context(tmp_path / "artifacts")
    (ctx.version_dir / "generator").mkdir()
    (ctx.version_dir / "generator" / "encoding.json").write_text(ENCODING.to_json())
    _graph(ctx.version_dir / tensorrt_step.ENCODER_MODEL, [("input_ids", ["queries", "source", 4])])
    _graph(
        ctx.version_dir / tensorrt_step.DECODER_MODEL,
        [("tokens", ["queries", "beams"]), ("past_key_0", ["past_rows", 2, "steps", 8])],
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "trtexec.log"
    fake = bin_dir / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(log=log))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(tensorrt_step, "tensorrt_module_present", lambda: False)
    monkeypatch.setattr(tensorrt_step, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("GENSEARCH_ONNX_TRT_FP16", "true")

    summary = step_tensorrt(ctx)

    assert summary.startswith("2 engine(s) (generator_encoder, generator_decoder) with TensorRT")
    assert "rag_reranker: no models/rag_reranker/1/model.onnx, skipped" in summary
    for name in ("generator_encoder", "generator_decoder"):
        assert (ctx.version_dir / "trt" / f"{name}.engine").read_text() == "engine"
    config = ctx.config["tensorrt"]
    assert config["version"] == "11.4.0" and config["gpu"] == "NVIDIA H100 80GB HBM3"
    assert config["builder"] == "trtexec" and config["fp16"] is True
    decoder = config["profiles"]["generator_decoder"]["profile"]
    assert decoder["tokens"] == {"min": [1, 1], "opt": [8, 20], "max": [16, 128]}
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    assert "--maxShapes=tokens:16x128,past_key_0:2048x2x3x8" in calls[1]
    assert "--fp16" in calls[1] and "--memPoolSize=workspace:4096M" in calls[1]


def test_a_failing_trtexec_fails_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(tmp_path / "artifacts")
    _graph(ctx.version_dir / tensorrt_step.ENCODER_MODEL, [("input_ids", ["queries", "source", 4])])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "trtexec"
    fake.write_text("#!/bin/sh\necho 'Error: unsupported node'\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(tensorrt_step, "tensorrt_module_present", lambda: False)
    with pytest.raises(RuntimeError, match="unsupported node"):
        step_tensorrt(ctx)


def test_trtexec_command_without_fp16() -> None:
    profile = {"x": ([1, 2], [4, 2], [8, 2])}
    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), profile, False, 1 << 30)
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--minShapes=x:1x2" in cmd and "--optShapes=x:4x2" in cmd
    assert "--memPoolSize=workspace:1024M" in cmd and "--fp16" not in cmd
