"""The op build: idempotent, CUDA kernels compiled and registered when nvcc exists, and the
library loads into a process that has not imported lhrcnn."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.so")
INFO = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.json")


def test_second_build_is_a_no_op():
    before = os.path.getmtime(LIB)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ops"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "up to date" in out
    assert os.path.getmtime(LIB) == before


def _cuda_expected():
    return os.environ.get("LHRCNN_CUDA") != "0" and (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"))


@pytest.mark.skipif(not _cuda_expected(), reason="no CUDA toolkit on this machine")
def test_cuda_kernels_are_compiled_and_linked():
    info = json.load(open(INFO))
    assert info["cuda"] is True, info
    assert {"sm_80", "sm_86", "sm_89", "sm_90"} <= set(info["archs"]) and info["archs"][-1].startswith("compute_")
    symbols = subprocess.run(["nm", "-DC", "--defined-only", LIB], capture_output=True, text=True, check=True).stdout
    for launcher in ("RoiAlignForwardGpu", "RoiAlignBackwardGpu", "PsRoiPoolForwardGpu", "PsRoiPoolBackwardGpu",
                     "NmsGpu", "ValidateRoisGpu", "ValidateNmsGpu"):
        assert f"lhrcnn::{launcher}(" in symbols, launcher
    # The fat binary holds code for every listed architecture.
    if shutil.which("cuobjdump"):
        listing = subprocess.run(["cuobjdump", "--list-elf", LIB], capture_output=True, text=True).stdout
        for arch in info["archs"][:-1]:
            assert arch in listing, (arch, listing)


@pytest.mark.skipif(not _cuda_expected(), reason="no CUDA toolkit on this machine")
def test_gpu_kernels_are_registered():
    code = ("import tensorflow as tf, json, sys\n"
            "tf.load_op_library(sys.argv[1])\n"
            "from tensorflow.python.framework import kernels\n"
            "names = ['LhrcnnPsRoiAlign', 'LhrcnnPsRoiAlignGrad', 'LhrcnnRoiAlign', 'LhrcnnRoiAlignGrad',\n"
            "         'LhrcnnPsRoiPool', 'LhrcnnPsRoiPoolGrad', 'LhrcnnNms', 'LhrcnnDepthwiseFilterGrad']\n"
            "print(json.dumps({n: sorted(k.device_type for k in kernels.get_registered_kernels_for_op(n).kernel)"
            " for n in names}))\n")
    out = subprocess.run([sys.executable, "-c", code, LIB], capture_output=True, text=True, check=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout
    devices = json.loads(out.strip().splitlines()[-1])
    for name, kinds in devices.items():  # the depthwise filter gradient is CPU only (TF's kernel on GPUs)
        assert kinds == (["CPU"] if name == "LhrcnnDepthwiseFilterGrad" else ["CPU", "GPU"]), (name, kinds)
