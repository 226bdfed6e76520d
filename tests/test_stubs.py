"""The committed gRPC stubs must be exactly what `make proto` generates from the .proto files."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "proto/fedstock/v1").glob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_committed_stubs_match_the_proto_files(tmp_path):
    (tmp_path / "proto").symlink_to(ROOT / "proto")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(str(p.relative_to(ROOT)) for p in PROTOS),
        ],
        cwd=tmp_path,
        check=True,
    )
    for proto in PROTOS:
        for suffix in GENERATED_SUFFIXES:
            name = proto.stem + suffix
            fresh = (out / "proto/fedstock/v1" / name).read_text()
            committed = (ROOT / "proto/fedstock/v1" / name).read_text()
            assert committed == fresh, f"{name} is stale: run `make proto` and commit the result"
