"""Generate the Python protobuf/gRPC package from ``protos/`` (``make protos``).

protoc writes absolute imports (``from gensearch.common.v1 import ...``); the
stubs live inside ``services.common.generated``, so those imports are rewritten
to that package. Output is not committed.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "services" / "common" / "generated"
PACKAGE = "services.common.generated"
# Only import statements are rewritten: the serialized descriptors (bytes literals)
# must keep the proto package names untouched.
_IMPORT_RE = re.compile(r"^(\s*)(from|import) gensearch\.", re.MULTILINE)


def main() -> int:
    """Run protoc over every .proto and rewrite imports; return the exit status."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        print("no .proto files under protos/", file=sys.stderr)
        return 1
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    status = protoc.main(args)
    if status != 0:
        return int(status)
    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        path.write_text(_IMPORT_RE.sub(rf"\1\2 {PACKAGE}.gensearch.", text))
    for directory in [OUT, *[d for d in OUT.rglob("*") if d.is_dir()]]:
        (directory / "__init__.py").touch()
    (OUT / "py.typed").touch()
    print(f"generated {len(protos)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
