"""The framework-free CUDA harness of ops/harness/ (see its README): it builds, and its driver works.

(a) With nvcc on PATH (or $NVCC): build.sh compiles the CUDA launchers into libharness.so, which
    exports the C ABI the driver calls. One architecture only (HARNESS_ARCHS, default 80) to keep
    the test short; LHRCNN_HARNESS_TEST_ARCHS=all builds the full list (about a minute on 2 cores).
    No GPU is needed: nothing is launched.
(b) The CPU-only variant (g++ only) runs `run_harness.py --cpu-only`: the CPU kernels against the
    NumPy reference, through the same driver that checks the GPU kernels on a GPU machine.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(ROOT, "ops", "harness")
BUILD_SH = os.path.join(HARNESS, "build.sh")
DRIVER = os.path.join(HARNESS, "run_harness.py")
REFERENCE = os.path.join(ROOT, "tests", "support", "reference_ops.py")

CPU_SYMBOLS = [
    "harness_has_cuda", "harness_abi_version", "hcpu_first_invalid_roi", "hcpu_first_invalid_nms_input",
    "hcpu_roi_align_forward", "hcpu_roi_align_backward", "hcpu_ps_roi_pool_forward",
    "hcpu_ps_roi_pool_backward", "hcpu_nms",
]
GPU_SYMBOLS = [
    "hgpu_device_count", "hgpu_device_name", "hgpu_device_capability", "hgpu_runtime_version",
    "hgpu_driver_version", "hgpu_error_string", "hgpu_last_error", "hgpu_malloc", "hgpu_free",
    "hgpu_memcpy_h2d", "hgpu_memcpy_d2h", "hgpu_memset", "hgpu_synchronize", "hgpu_validate_rois",
    "hgpu_roi_align_workspace_floats", "hgpu_roi_align_forward", "hgpu_roi_align_backward",
    "hgpu_ps_roi_pool_workspace_floats", "hgpu_ps_roi_pool_forward",
    "hgpu_ps_roi_pool_backward", "hgpu_validate_nms", "hgpu_nms_workspace_bytes", "hgpu_nms",
]

# Loads a library in a fresh interpreter (no other CUDA runtime around) and lists what it exports.
_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    lib = ctypes.CDLL(sys.argv[1])
    names = json.loads(sys.argv[2])
    print(json.dumps({"missing": [n for n in names if not hasattr(lib, n)],
                      "has_cuda": lib.harness_has_cuda(), "abi": lib.harness_abi_version()}))
""")


def _nvcc():
    return shutil.which(os.environ.get("NVCC", "nvcc"))


def _build(out_dir, **env):
    proc = subprocess.run(["bash", BUILD_SH, str(out_dir)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=1200)
    assert proc.returncode == 0, f"build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _probe(library, names):
    import json
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(library), json.dumps(names)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"cannot load {library}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed (set NVCC=/path/to/nvcc)")
def test_cuda_build_compiles_and_exports_the_c_abi(tmp_path):
    archs = os.environ.get("LHRCNN_HARNESS_TEST_ARCHS", "80")
    env = {"NVCC": _nvcc(), "HARNESS_NATIVE": "0", "HARNESS_CPU_ONLY": "0"}
    if archs != "all":
        env["HARNESS_ARCHS"] = archs
    log = _build(tmp_path, **env)
    library = tmp_path / "libharness.so"
    assert library.is_file(), f"build.sh did not write {library}:\n{log}"
    info = _probe(library, CPU_SYMBOLS + GPU_SYMBOLS)
    assert info["missing"] == [], f"libharness.so lacks {info['missing']}"
    assert info["has_cuda"] == 1
    assert info["abi"] == 2


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="tests/support/reference_ops.py (the NumPy reference) "
                                                          "does not exist yet")
def test_driver_cpu_only_matches_the_numpy_reference(tmp_path):
    _build(tmp_path, HARNESS_CPU_ONLY="1")
    library = tmp_path / "libharness_cpu.so"
    info = _probe(library, CPU_SYMBOLS)
    assert info["missing"] == [] and info["has_cuda"] == 0, info
    report = tmp_path / "report.json"
    _run_cpu_checks([DRIVER], library, report)
    assert report.is_file()


def _run_cpu_checks(command, library, report):
    """`command` (the driver, or an interpreter line that runs it) with `--cpu-only --lib library`:
    exit status 0, nothing failed, at least 90 checks ran. Returns its stdout."""
    proc = subprocess.run([sys.executable, *command, "--cpu-only", "--lib", str(library), "--reference", REFERENCE,
                           "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    failures = "\n".join(line for line in lines if line.startswith("FAIL"))
    assert proc.returncode == 0, f"run_harness.py --cpu-only --lib {library} failed ({proc.returncode}):\n" \
                                 f"{failures}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert lines and lines[-1].split(" passed, ")[1].startswith("0 failed"), lines[-1:]
    passed = int(lines[-1].split(" passed")[0])
    assert passed >= 90, f"only {passed} checks ran:\n{proc.stdout[-3000:]}"
    return proc.stdout


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="tests/support/reference_ops.py (the NumPy reference) "
                                                          "does not exist yet")
def test_the_op_library_itself_carries_the_abi_and_passes_the_cpu_checks(tmp_path):
    """The binary TensorFlow loads (lhrcnn/_lhrcnn_ops.so) exports the harness's C ABI, its CUDA
    part when it was built with CUDA, and passes `run_harness.py --cpu-only` loaded in a process
    that never imports TensorFlow (the driver loads TF's framework library for it)."""
    import json

    from lhrcnn import ops
    library = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.so")
    assert ops.custom_ops_available(), ops.custom_ops_load_error()
    with open(os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.json")) as f:
        cuda = json.load(f).get("cuda")
    out = _run_cpu_checks(["-c", "import runpy, sys\n"
                           "code = runpy.run_path(sys.argv[1])['main'](sys.argv[2:])\n"
                           "assert 'tensorflow' not in sys.modules, 'the driver imported TensorFlow'\n"
                           "sys.exit(code)", DRIVER], library, tmp_path / "report.json")
    assert f"library: {library} ({'CUDA' if cuda else 'CPU-only'} build)" in out, out[:500]
    exported = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True).stdout.split()
    missing = [name for name in CPU_SYMBOLS + (GPU_SYMBOLS if cuda else []) if name not in exported]
    assert missing == [], missing
