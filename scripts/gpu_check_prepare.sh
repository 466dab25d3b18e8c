#!/usr/bin/env bash
# Run HERE (a machine with network and the project's venv) before a device call: puts under
# .cache/gpu_check/ (git-ignored; name it in the device call's `carry`) what
# scripts/gpu_check.sh needs on a lent GPU machine that has no network:
#   generated/           services/common/generated (git-ignored: it would not travel);
#   artifact/<version>/  the slice of an artifact version the check reads (generator graphs,
#                        encoding, tokenizer, SID codes, the three tables), a few MB;
#   whl/                 the project's pure-Python/binary dependencies that the machine's
#                        image lacks (pydantic, pydantic-settings, redis, grpc health/reflection,
#                        protobuf, orjson, ...), pinned to this venv's versions, for CPython 3.12.
# onnxruntime-gpu (a 256 MB wheel) cannot travel: the carry limit is 64 MiB (docs/gpu.md).
# Usage: scripts/gpu_check_prepare.sh [ARTIFACT_VERSION_DIR]   (default: artifacts/CURRENT)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.cache/gpu_check
src=${1:-}
if [[ -z "$src" ]]; then
  root=${GENSEARCH_ARTIFACT_DIR:-artifacts}
  src="$root/$(cat "$root/CURRENT")"
fi
version=$(basename "$src")
dst="$OUT/artifact/$version"
rm -rf "$OUT/artifact" && mkdir -p "$dst"
for rel in generator/encoding.json generator/tokenizer.json generator/sid_codes.npy \
  models/generator_encoder/1/model.onnx models/generator_decoder/1/model.onnx \
  tables/items.parquet tables/users.parquet tables/queries.parquet; do
  mkdir -p "$dst/$(dirname "$rel")"
  cp "$src/$rel" "$dst/$rel"
done
# external weights of large graphs (model.onnx.data), when the export wrote them
for f in "$src"/models/generator_*/1/*.data; do
  [[ -e "$f" ]] && cp "$f" "$dst/${f#"$src"/}"
done
echo "$version" > "$OUT/artifact/CURRENT"
# the generated protobuf package is git-ignored, so it does not travel by itself
rm -rf "$OUT/generated" && cp -r services/common/generated "$OUT/generated"
find "$OUT/generated" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$OUT/whl"
pins=$("$PY" - <<'PY'
import importlib.metadata as md
names = ["pydantic", "pydantic_core", "pydantic-settings", "python-dotenv", "typing-inspection",
         "annotated-types", "typing_extensions", "redis", "orjson", "grpcio",
         "grpcio-health-checking", "grpcio-reflection", "protobuf", "python-json-logger"]
print(" ".join(f"{n}=={md.version(n)}" for n in names))
PY
)
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$OUT/whl" $pins
du -sh "$OUT/artifact" "$OUT/whl"
echo "ready: carry .cache/gpu_check and run scripts/gpu_check.sh on the device"
