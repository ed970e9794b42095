"""The build of lhrcnn's custom ops, and its hooks into setuptools (pyproject.toml holds the metadata).

Two entry points run the same build (`build_ops` below):

* `pip install .`, `pip wheel .`, `pip install -e .`: setuptools' build_ext step is `BuildOpsExt`,
  which compiles ops/kernels/ and writes `_lhrcnn_ops.so` and its build record `_lhrcnn_ops.json`
  into the built package (into lhrcnn/ itself for an editable install). The distribution declares
  a compiled part, so wheels are platform-tagged. When the build fails (no compiler, no
  TensorFlow, a compile error) the installation still succeeds without the library: the record
  says why, and lhrcnn.ops then uses its pure-TF twins. LHRCNN_REQUIRE_OPS=1 turns such a failure
  into a failed installation.
* `python setup.py build_ops` (what `make install` runs): the same build into lhrcnn/ in place;
  a failure exits with status 1 and leaves the previous library and record as they were.

TensorFlow: the build uses the compile and link flags (tf.sysconfig) of the TensorFlow that this
interpreter imports; when that fails and PYTHONPATH or PYTHONNOUSERSITE is set (pip's build
isolation sets both), it asks the same interpreter without them, i.e. the environment being
installed into. So a plain `pip install .` into an environment that already has TensorFlow builds
against that TensorFlow and downloads nothing; `--no-build-isolation` does the same explicitly.

CUDA kernels are compiled and linked in when a CUDA toolkit is found (LHRCNN_CUDA=0|1 forces the
choice; LHRCNN_NVCC or CUDA_HOME name the compiler; LHRCNN_CUDA_ARCHS="75,80,..." overrides the
architectures). Objects are cached under build/ops/<hash of the flags>/ and rebuilt only when a
source or a header changes; compiler commands use paths relative to this folder, so a copy of the
checkout with its build/ops/ reuses the cache. The library and the record are written atomically.
"""
import concurrent.futures
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import Command, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join("ops", "kernels")  # relative to ROOT, like every path in the commands
CACHE_DIR = os.path.join("build", "ops")
PACKAGE_DIR = os.path.join(ROOT, "lhrcnn")
LIBRARY_NAME = "_lhrcnn_ops.so"
RECORD_NAME = "_lhrcnn_ops.json"
CPU_SOURCES = ["roi_pooling_cpu.cc", "nms_cpu.cc", "depthwise_cpu.cc", "roi_align_ops.cc", "ps_roi_pool_ops.cc",
               "nms_ops.cc", "depthwise_ops.cc"]
CUDA_SOURCES = ["roi_pooling.cu.cc", "nms.cu.cc"]
# The CUDA harness's C ABI over the same launchers and CPU kernels, linked into the op library too:
# `ops/harness/run_harness.py --lib lhrcnn/_lhrcnn_ops.so` then checks the very binary TensorFlow
# loads, its own CUDA runtime beside TensorFlow's (nvcc; without CUDA, its CPU part, by g++).
HARNESS_SHIM = os.path.join("ops", "harness", "harness_api.cu.cc")
FIX_HINT = "fix the cause, then `pip install --force-reinstall --no-deps .` or `make ops`"


class BuildError(Exception):
    """A reason the op library cannot be built: `reason` is one line, `detail` the tool output."""

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _log(msg):
    print(f"[build_ops] {msg}", flush=True)


def _abs(path):
    return os.path.join(ROOT, path)


def find_nvcc():
    """Returns the nvcc path to use, or None for a CPU-only build."""
    choice = os.environ.get("LHRCNN_CUDA", "").strip()
    if choice not in ("", "0", "1"):
        raise BuildError(f"LHRCNN_CUDA must be 0 or 1, got {choice!r}")
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
        raise BuildError("LHRCNN_CUDA=1 but no nvcc was found (set LHRCNN_NVCC or CUDA_HOME)")
    return None


def nvcc_version(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise BuildError(f"cannot read the CUDA version from `{nvcc} --version`", out)
    return int(m.group(1)), int(m.group(2))


def cuda_library_dir(nvcc):
    """The toolkit folder holding libcudart_static.a, as nvcc itself reports it."""
    out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True)
    dirs = re.findall(r'-L"?([^"\s]+)"?', out.stdout + out.stderr)
    dirs += [os.path.join(os.path.dirname(os.path.dirname(nvcc)), d) for d in ("lib64", "lib")]
    for d in dirs:
        if os.path.exists(os.path.join(d, "libcudart_static.a")):
            return os.path.realpath(d)
    raise BuildError(f"no libcudart_static.a next to {nvcc} (searched {dirs}); set LHRCNN_CUDA=0 to build "
                     "without CUDA")


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


_TF_PROBE = ("import json, tensorflow as tf; print(json.dumps([tf.sysconfig.get_compile_flags(), "
             "tf.sysconfig.get_link_flags(), tf.__version__, tf.sysconfig.get_lib()]))")


def tf_flags():
    """(compile flags, link flags, version, package folder) of the TensorFlow to build against:
    this interpreter's, else (under pip's build isolation) the one of its own environment."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    attempts = [env]
    if "PYTHONPATH" in env or "PYTHONNOUSERSITE" in env:
        attempts.append({k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")})
    errors = []
    for attempt in attempts:
        out = subprocess.run([sys.executable, "-c", _TF_PROBE], capture_output=True, text=True, env=attempt)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])
        errors.append(out.stderr.strip())
    last = errors[-1].splitlines()[-1] if errors[-1] else "no output"
    raise BuildError(f"TensorFlow is not importable by {sys.executable} at build time ({last}); install "
                     "tensorflow first", "\n\n".join(errors))


def _run(cmd):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    except OSError as e:  # the compiler itself is missing or not executable
        raise BuildError(f"cannot run {cmd[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        first = next((line for line in output.splitlines() if "error" in line), output[:200]) or "no output"
        raise BuildError(f"`{os.path.basename(cmd[0])}` failed (status {proc.returncode}): {first.strip()}",
                         f"{' '.join(cmd)}\n{output}")


def _compile(obj, cmd):
    """Runs a compile command that writes obj + ".tmp", then renames it: an interrupted compile
    never leaves a fresh-looking object behind."""
    _run(cmd)
    os.replace(_abs(obj + ".tmp"), _abs(obj))


def _compile_and_link(library, info, verbose):
    """Compiles the kernels (cached) and links `library`; fills `info` (the build record) as it
    learns, so that a failure's record keeps what was known."""
    compile_flags, link_flags, tf_version, tf_lib = tf_flags()
    info.update(tensorflow=tf_version, tensorflow_lib=tf_lib)
    nvcc = find_nvcc()
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise BuildError(f"no C++ compiler: `{cxx}` is not on PATH (install g++ or set CXX)")
    info["compiler"] = cxx
    cxxflags = ["-std=c++17", "-O3", "-fPIC", "-ffp-contract=off", "-Wno-deprecated-declarations", "-Wno-psabi",
                f"-I{KERNELS}"] + compile_flags
    jobs = []  # (source, object name, command without its output), paths relative to ROOT
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
            path = os.path.join(KERNELS, src)
            jobs.append((path, src.replace(".cu.cc", ".cu.o"), [nvcc] + nvflags + ["-c", path]))
        jobs.append((HARNESS_SHIM, "harness_api.cu.o", [nvcc] + nvflags + ["-c", HARNESS_SHIM]))
        # The static CUDA runtime of this nvcc, linked before TensorFlow's framework library (which
        # exports the runtime API of the CUDA TensorFlow was built with: listed first, it would
        # resolve every cuda* symbol and the static runtime would never be used), its symbols kept
        # local (--exclude-libs) so that neither library's runtime interposes on the other's.
        link_flags = [f"-L{cuda_library_dir(nvcc)}", "-l:libcudart_static.a", "-Wl,--exclude-libs,libcudart_static.a",
                      "-ldl", "-lrt", "-lpthread"] + link_flags
        info.update(cuda=True, nvcc=nvcc, cuda_version="%d.%d" % version,
                    archs=[f"sm_{a}" for a in archs] + [f"compute_{max(archs)}"],
                    cuda_runtime=f"static libcudart {version[0]}.{version[1]} linked in; needs an NVIDIA driver "
                                 f"for CUDA {version[0]}.{version[1]} or newer")
    for src in CPU_SOURCES:
        path = os.path.join(KERNELS, src)
        jobs.append((path, src.replace(".cc", ".o"), [cxx] + cxxflags + ["-c", path]))
    if not nvcc:
        jobs.append((HARNESS_SHIM, "harness_api_cpu.o",
                     [cxx] + cxxflags + ["-DHARNESS_CPU_ONLY", "-x", "c++", "-c", HARNESS_SHIM]))

    # One cache folder per set of flags: switching TensorFlow, compiler or CUDA back and forth
    # reuses each set's objects, and a failed build never mixes objects of two sets.
    object_key = hashlib.sha256(json.dumps([j[2] for j in jobs]).encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps([j[2] for j in jobs] + link_flags).encode()).hexdigest()[:16]
    info["cache_key"] = key  # the objects and the link: a change of either relinks
    cache = os.path.join(CACHE_DIR, object_key)
    os.makedirs(_abs(cache), exist_ok=True)
    newest_header = max(os.path.getmtime(h) for h in glob.glob(os.path.join(_abs(KERNELS), "*.h")))

    def stale(src, obj):
        if not os.path.exists(_abs(obj)):
            return True
        t = os.path.getmtime(_abs(obj))
        return os.path.getmtime(_abs(src)) > t or newest_header > t

    objects = [os.path.join(cache, name) for _, name, _ in jobs]
    todo = [(src, obj, cmd + ["-o", obj + ".tmp"]) for (src, _, cmd), obj in zip(jobs, objects) if stale(src, obj)]
    if todo:
        _log(f"compiling {len(todo)} file(s) with {os.cpu_count()} job(s)"
             + (f" (CUDA {info['cuda_version']}, {' '.join(info['archs'])})" if nvcc else " (CPU only)"))
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = {pool.submit(_compile, obj, cmd): src for src, obj, cmd in todo}
            for f in concurrent.futures.as_completed(futures):
                f.result()
                _log(f"  compiled {os.path.basename(futures[f])}")
    linked_key = _read_record(os.path.join(os.path.dirname(library), RECORD_NAME)).get("cache_key")
    if todo or not os.path.exists(library) or linked_key != key or \
            os.path.getmtime(library) < max(os.path.getmtime(_abs(o)) for o in objects):
        os.makedirs(os.path.dirname(library), exist_ok=True)
        tmp = library + ".tmp"
        try:
            _run([cxx, "-shared", "-o", tmp] + objects + link_flags)
            if nvcc:
                check_cuda_runtime_linked(tmp)
            os.replace(tmp, library)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _log(f"linked {os.path.relpath(library, ROOT) if library.startswith(ROOT) else library}")
    elif verbose:
        _log("up to date")
    info.update(built=True, error=None)


def undefined_cuda_symbols(library):
    """The CUDA runtime symbols (cuda*, __cuda*) `library` leaves undefined, i.e. takes from
    whichever library of the process exports them; None when `nm` is not available."""
    nm = shutil.which("nm")
    if not nm:
        return None
    out = subprocess.run([nm, "-D", "--undefined-only", library], capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"`nm -D {library}` failed: {out.stderr.strip()[:200]}")
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    return sorted(n for n in names if re.match(r"^(__)?cuda", n))


def check_cuda_runtime_linked(library):
    """BuildError when the CUDA kernels of `library` would be registered and launched through
    another library's CUDA runtime (an undefined cuda* symbol)."""
    missing = undefined_cuda_symbols(library)
    if missing:
        raise BuildError(f"the op library takes {len(missing)} CUDA runtime symbols from elsewhere (e.g. "
                         f"{', '.join(missing[:3])}) instead of its static runtime: the link order is wrong")


def _read_record(path):
    """The build record at `path`, or {} when there is none (or it is unreadable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_record(path, record):
    """Writes the build record atomically, and only when its content changes."""
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def build_ops(dest_dir=PACKAGE_DIR, required=True, verbose=True):
    """Builds `dest_dir`/_lhrcnn_ops.so and writes `dest_dir`/_lhrcnn_ops.json; returns the record.

    The record holds: built (bool), error (one line, or None), error_detail (the failing tool's
    output), tensorflow (the version built against, when known), tensorflow_lib, compiler, cuda,
    and with CUDA nvcc, cuda_version and archs; python and platform.

    With `required`, a failure raises SystemExit (status 1) and leaves both files untouched.
    Without it, a failure removes a previous library from `dest_dir` (it would not match this
    build's TensorFlow), records the reason and returns normally.
    """
    library = os.path.join(dest_dir, LIBRARY_NAME)
    record_path = os.path.join(dest_dir, RECORD_NAME)
    info = {"built": False, "error": None, "tensorflow": None, "cuda": False,
            "python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}
    try:
        _compile_and_link(library, info, verbose)
    except BuildError as e:
        if required:
            detail = e.detail[-4000:] if e.detail else ""
            raise SystemExit(f"[build_ops] error: {e.reason}\n{detail}".rstrip()) from None
        info.update(built=False, error=e.reason, error_detail=e.detail[-4000:] if e.detail else None)
        if os.path.exists(library):
            os.remove(library)
        _log(f"warning: the custom ops were not built: {e.reason}")
        _log(f"warning: lhrcnn will use its pure-TF twins; {FIX_HINT}")
    _write_record(record_path, info)
    return info


class BuildOpsExt(build_ext):
    """setuptools' build_ext step for lhrcnn: builds the op library instead of Extension objects.

    Regular builds (wheel, install) write into build_lib/lhrcnn/, which the wheel packs; an
    editable install or `build_ext --inplace` writes into lhrcnn/ in the source tree. A failure
    is recorded and tolerated unless LHRCNN_REQUIRE_OPS=1.
    """

    def _dest_dir(self):
        return PACKAGE_DIR if self.inplace else os.path.join(os.path.abspath(self.build_lib), "lhrcnn")

    def run(self):
        required = os.environ.get("LHRCNN_REQUIRE_OPS", "").strip() == "1"
        build_ops(self._dest_dir(), required=required)

    def get_outputs(self):
        if self.inplace:
            return []
        dest = self._dest_dir()
        return [os.path.join(dest, name) for name in (LIBRARY_NAME, RECORD_NAME)
                if os.path.exists(os.path.join(dest, name))]

    def get_output_mapping(self):
        return {}

    def get_source_files(self):
        return [os.path.join(KERNELS, f) for f in sorted(os.listdir(_abs(KERNELS)))] + [HARNESS_SHIM]


class BuildOps(Command):
    """`python setup.py build_ops`: the op build into lhrcnn/ in place; a failure is an error."""

    description = "compile the custom TensorFlow ops into lhrcnn/_lhrcnn_ops.so"
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        build_ops(PACKAGE_DIR, required=True)


class BinaryDistribution(Distribution):
    """A distribution with a compiled part: its wheel gets a platform tag and installs to platlib."""

    def has_ext_modules(self):
        return True


def _version():
    """lhrcnn.__version__, read from lhrcnn/__init__.py without importing the package."""
    with open(os.path.join(PACKAGE_DIR, "__init__.py")) as f:
        m = re.search(r"^__version__ = [\"']([^\"']+)[\"']", f.read(), re.M)
    if not m:
        raise SystemExit("lhrcnn/__init__.py has no __version__ = '...' line")
    return m.group(1)


if __name__ == "__main__":
    setup(
        version=_version(),
        packages=find_packages(include=["lhrcnn", "lhrcnn.*"]),
        # The op library and its record reach the package through BuildOpsExt only: a copy left
        # in lhrcnn/ by an in-place build (`make ops`) may belong to another TensorFlow.
        include_package_data=False,
        distclass=BinaryDistribution,
        cmdclass={"build_ext": BuildOpsExt, "build_ops": BuildOps},
    )
