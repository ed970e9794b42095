"""The op library's CUDA kernels use the static CUDA runtime linked into it, not the runtime
TensorFlow's framework library exports (another CUDA version): no cuda* symbol is left undefined,
and the build record names the runtime."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import setup  # noqa: E402  (the build's own check)

LIBRARY = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.so")
RECORD = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.json")

needs_nm = pytest.mark.skipif(not shutil.which("nm") or not shutil.which("g++"), reason="needs nm and g++")


def _record():
    with open(RECORD) as f:
        return json.load(f)


@needs_nm
def test_the_built_library_takes_no_cuda_symbol_from_elsewhere():
    if not os.path.isfile(LIBRARY) or not _record().get("cuda"):
        pytest.skip("the op library was built without CUDA")
    assert setup.undefined_cuda_symbols(LIBRARY) == []
    record = _record()
    assert record["cuda_runtime"].startswith(f"static libcudart {record['cuda_version']}")


@needs_nm
def test_the_check_catches_a_library_that_borrows_the_runtime(tmp_path):
    source = tmp_path / "borrow.cc"
    source.write_text('extern "C" int cudaGetDeviceCount(int*);\n'
                      'extern "C" int count() { int n = 0; return cudaGetDeviceCount(&n) ? -1 : n; }\n')
    library = tmp_path / "borrow.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    assert setup.undefined_cuda_symbols(str(library)) == ["cudaGetDeviceCount"]
    with pytest.raises(setup.BuildError, match="takes 1 CUDA runtime symbols from elsewhere"):
        setup.check_cuda_runtime_linked(str(library))
