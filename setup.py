"""Packaging of lhrcnn, and the build of its custom ops.

`python setup.py build_ops` compiles ops/kernels/ into lhrcnn/_lhrcnn_ops.so with the installed
TensorFlow's compile and link flags (tf.sysconfig). CUDA kernels are compiled and linked in
when a CUDA toolkit is found (LHRCNN_CUDA=0|1 forces the choice; LHRCNN_NVCC or CUDA_HOME name
the compiler; LHRCNN_CUDA_ARCHS="75,80,..." overrides the architectures). Objects are cached
under build/ops/ and rebuilt only when a source, a header or the flags change; the library is
written atomically. lhrcnn/_lhrcnn_ops.json records how it was built.
"""
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import Command, find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(ROOT, "ops", "kernels")
BUILD_DIR = os.path.join(ROOT, "build", "ops")
LIBRARY = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.so")
CPU_SOURCES = ["roi_pooling_cpu.cc", "nms_cpu.cc", "roi_align_ops.cc", "ps_roi_pool_ops.cc", "nms_ops.cc"]
CUDA_SOURCES = ["roi_pooling.cu.cc", "nms.cu.cc"]


def _log(msg):
    print(f"[build_ops] {msg}", flush=True)


def find_nvcc():
    """Returns the nvcc path to use, or None for a CPU-only build."""
    choice = os.environ.get("LHRCNN_CUDA", "").strip()
    if choice not in ("", "0", "1"):
        raise SystemExit(f"LHRCNN_CUDA must be 0 or 1, got {choice!r}")
    if choice == "0":
        return None
    candidates = [os.environ.get("LHRCNN_NVCC")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if choice == "1":
        raise SystemExit("LHRCNN_CUDA=1 but no nvcc was found (set LHRCNN_NVCC or CUDA_HOME)")
    return None


def nvcc_version(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return int(m.group(1)), int(m.group(2))


def cuda_library_dir(nvcc):
    """The toolkit folder holding libcudart_static.a, as nvcc itself reports it."""
    out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True)
    dirs = re.findall(r'-L"?([^"\s]+)"?', out.stdout + out.stderr)
    dirs += [os.path.join(os.path.dirname(os.path.dirname(nvcc)), d) for d in ("lib64", "lib")]
    for d in dirs:
        if os.path.exists(os.path.join(d, "libcudart_static.a")):
            return os.path.realpath(d)
    raise SystemExit(f"no libcudart_static.a next to {nvcc} (searched {dirs}); set LHRCNN_CUDA=0 to build without CUDA")


def cuda_archs(version):
    """sm_70/80/86/89/90 + PTX; CUDA >= 13 cannot target Volta, so sm_75 stands in for sm_70."""
    env = os.environ.get("LHRCNN_CUDA_ARCHS")
    if env:
        archs = [int(a) for a in env.replace(" ", "").split(",") if a]
    elif version[0] >= 13:
        archs = [75, 80, 86, 89, 90]
    else:
        archs = [70, 80, 86, 89, 90]
    return archs


def tf_flags():
    code = ("import json, tensorflow as tf; print(json.dumps([tf.sysconfig.get_compile_flags(), "
            "tf.sysconfig.get_link_flags(), tf.__version__]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if out.returncode != 0:
        raise SystemExit(f"cannot import tensorflow to read its build flags:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def build_ops(verbose=True):
    os.makedirs(BUILD_DIR, exist_ok=True)
    compile_flags, link_flags, tf_version = tf_flags()
    nvcc = find_nvcc()
    cxx = os.environ.get("CXX", "g++")
    cxxflags = ["-std=c++17", "-O3", "-fPIC", "-ffp-contract=off", "-Wno-deprecated-declarations", "-Wno-psabi",
                f"-I{KERNELS}"] + compile_flags
    info = {"tensorflow": tf_version, "cuda": False}
    jobs = []  # (source, object, command)
    if nvcc:
        version = nvcc_version(nvcc)
        archs = cuda_archs(version)
        cxxflags.append("-DLHRCNN_WITH_CUDA=1")
        gencode = []
        for a in archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        gencode += ["-gencode", f"arch=compute_{max(archs)},code=compute_{max(archs)}"]
        nvflags = ["-std=c++17", "-O3", "-fmad=false", "-Xcompiler", "-fPIC", f"-I{KERNELS}", "-x", "cu"] + gencode
        for src in CUDA_SOURCES:
            obj = os.path.join(BUILD_DIR, src.replace(".cu.cc", ".cu.o"))
            jobs.append((src, obj, [nvcc] + nvflags + ["-c", os.path.join(KERNELS, src), "-o", obj]))
        link_flags = link_flags + [f"-L{cuda_library_dir(nvcc)}", "-lcudart_static", "-ldl", "-lrt",
                                   "-lpthread"]
        info.update(cuda=True, nvcc=nvcc, cuda_version="%d.%d" % version,
                    archs=[f"sm_{a}" for a in archs] + [f"compute_{max(archs)}"])
    for src in CPU_SOURCES:
        obj = os.path.join(BUILD_DIR, src.replace(".cc", ".o"))
        jobs.append((src, obj, [cxx] + cxxflags + ["-c", os.path.join(KERNELS, src), "-o", obj]))

    headers = glob.glob(os.path.join(KERNELS, "*.h"))
    newest_header = max(os.path.getmtime(h) for h in headers)
    stamp_path = os.path.join(BUILD_DIR, "flags.json")
    flags_key = hashlib.sha256(json.dumps([j[2] for j in jobs] + link_flags).encode()).hexdigest()
    old_key = json.load(open(stamp_path)).get("key") if os.path.exists(stamp_path) else None

    def stale(src, obj):
        if old_key != flags_key or not os.path.exists(obj):
            return True
        t = os.path.getmtime(obj)
        return os.path.getmtime(os.path.join(KERNELS, src)) > t or newest_header > t

    todo = [j for j in jobs if stale(j[0], j[1])]
    if todo:
        _log(f"compiling {len(todo)} file(s) with {os.cpu_count()} job(s)"
             + (f" (CUDA {info['cuda_version']}, {' '.join(info['archs'])})" if nvcc else " (CPU only)"))
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = {pool.submit(_run, cmd): src for src, obj, cmd in todo}
            for f in concurrent.futures.as_completed(futures):
                f.result()
                _log(f"  compiled {futures[f]}")
    objects = [j[1] for j in jobs]
    if todo or not os.path.exists(LIBRARY) or old_key != flags_key or \
            os.path.getmtime(LIBRARY) < max(os.path.getmtime(o) for o in objects):
        tmp = LIBRARY + ".tmp"
        _run([cxx, "-shared", "-o", tmp] + objects + link_flags)
        os.replace(tmp, LIBRARY)
        with open(LIBRARY.replace(".so", ".json") + ".tmp", "w") as f:
            json.dump(info, f, indent=1)
        os.replace(LIBRARY.replace(".so", ".json") + ".tmp", LIBRARY.replace(".so", ".json"))
        _log(f"linked {os.path.relpath(LIBRARY, ROOT)}")
    elif verbose:
        _log("up to date")
    with open(stamp_path, "w") as f:
        json.dump({"key": flags_key}, f)


class BuildOps(Command):
    description = "compile the custom TensorFlow ops into lhrcnn/_lhrcnn_ops.so"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        build_ops()


if __name__ == "__main__":
    setup(
        name="lhrcnn",
        version="0.1.0",
        description="Light-Head R-CNN and related two-stage detectors for TensorFlow 2 / Keras",
        packages=find_packages(include=["lhrcnn", "lhrcnn.*"]),
        package_data={"lhrcnn": ["_lhrcnn_ops.so", "_lhrcnn_ops.json"]},
        python_requires=">=3.10",
        install_requires=["tensorflow>=2.20,<2.22", "tf-keras>=2.20,<2.22", "numpy", "pycocotools>=2.0.11",
                          "absl-py"],
        cmdclass={"build_ops": BuildOps},
    )
