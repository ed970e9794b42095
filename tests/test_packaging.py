"""Packaging: `pip wheel` / `pip install` / `pip install -e` of a clean copy of the checkout build the
custom ops into the installed package; a failed op build still installs and records why; the import
of lhrcnn.ops warns in one line when the library was built against another TensorFlow.

The slow tests build from a copy of the checkout's tracked and unignored files (no library, no build
record, no egg-info), reusing build/ops/ so that only the link runs, and install into a throw-away
venv that sees this interpreter's packages (TensorFlow...) through a .pth path entry; a path entry
does not process that folder's own .pth files, so the repository itself is not on its sys.path.
"""
import glob
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
QUIET.pop("PYTHONPATH", None)
QUIET.pop("LHRCNN_OPS", None)

IMPORT_CHECK = (
    "import json, lhrcnn, lhrcnn.ops\n"
    "assert lhrcnn.ops.custom_ops_available(), lhrcnn.ops.custom_ops_load_error()\n"
    "import tensorflow as tf\n"
    "idx, n = lhrcnn.ops.nms(tf.constant([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]),\n"
    "                        tf.constant([0.9, 0.8, 0.7]), 3, 0.5, backend='custom')\n"
    "assert int(n) == 2 and idx.numpy().tolist() == [0, 2, -1], (idx, n)\n"
    "print(json.dumps({'file': lhrcnn.__file__, 'info': lhrcnn.ops.build_info()}))\n"
)


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=kwargs.pop("env", QUIET), **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _checkout_files():
    """Tracked and unignored files of the checkout that exist (what a clean clone would hold)."""
    out = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    return [f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]


def _venv(path):
    """A venv without pip that imports this interpreter's site-packages after its own."""
    _run([sys.executable, "-m", "venv", "--without-pip", path])
    py = os.path.join(path, "bin", "python")
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(purelib, "zz_lhrcnn_test_base.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return py


def _pip_install(py, *args):
    return _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", *args])


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory):
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):  # a worktree's is a file
        pytest.skip("needs the git checkout")
    src = str(tmp_path_factory.mktemp("checkout") / "lhrcnn-src")
    for f in _checkout_files():
        os.makedirs(os.path.dirname(os.path.join(src, f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(src, f))  # mtimes kept: the cache stays fresh
    for leftover in ("lhrcnn/_lhrcnn_ops.so", "lhrcnn/_lhrcnn_ops.json"):
        assert not os.path.exists(os.path.join(src, leftover)), f"{leftover} must not be tracked"
    if os.path.isdir(os.path.join(ROOT, "build", "ops")):
        shutil.copytree(os.path.join(ROOT, "build", "ops"), os.path.join(src, "build", "ops"))
    return src


@pytest.fixture(scope="module")
def wheel(clean_copy, tmp_path_factory):
    dist = str(tmp_path_factory.mktemp("dist"))
    env = dict(QUIET, LHRCNN_REQUIRE_OPS="1")  # a failed op build fails this test, with its output
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, clean_copy],
         env=env, cwd=dist)
    wheels = glob.glob(os.path.join(dist, "lhrcnn-*.whl"))
    assert len(wheels) == 1, os.listdir(dist)
    return wheels[0]


@pytest.mark.slow
def test_wheel_is_platform_tagged_and_holds_the_library(wheel):
    name = os.path.basename(wheel)
    tags = name[:-len(".whl")].split("-")[-3:]  # python, abi, platform
    assert tags[1] != "none" and tags[2] != "any", name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "lhrcnn/_lhrcnn_ops.so" in names and "lhrcnn/_lhrcnn_ops.json" in names, names
        wheel_meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        record = json.loads(z.read("lhrcnn/_lhrcnn_ops.json"))
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "Root-Is-Purelib: false" in wheel_meta
    assert record["built"] is True and record["error"] is None, record
    assert record["tensorflow"] == tf.__version__, record
    assert "lhrcnn = lhrcnn.cli:main" in entry_points
    for requirement in ("tensorflow<2.22,>=2.20", "tf_keras<2.22,>=2.20", "tensorboard<2.22,>=2.20"):
        assert f"Requires-Dist: {requirement}" in metadata.replace("tf-keras", "tf_keras"), requirement


@pytest.mark.slow
def test_installed_wheel_loads_its_ops_outside_the_checkout(wheel, tmp_path):
    py = _venv(str(tmp_path / "venv"))
    _pip_install(py, wheel)
    out = _run([py, "-c", IMPORT_CHECK], cwd=str(tmp_path)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["file"].startswith(str(tmp_path / "venv")), result["file"]
    assert result["info"]["library"].startswith(str(tmp_path / "venv")), result["info"]
    assert result["info"]["version_match"] is True and result["info"]["backend"] == "custom", result["info"]
    assert os.path.exists(tmp_path / "venv" / "bin" / "lhrcnn")  # the console script


@pytest.mark.slow
def test_installed_command_trains_and_predicts_outside_the_checkout(wheel, tmp_path):
    """What a user of the wheel does, from a folder outside the checkout: info, an experiment of
    their own from the template, 3 training steps on their data, predictions on an image."""
    from lhrcnn.data.synthetic import write_dataset
    py = _venv(str(tmp_path / "venv"))
    _pip_install(py, wheel)
    lhrcnn = str(tmp_path / "venv" / "bin" / "lhrcnn")
    work = tmp_path / "work"
    for split, count, seed in (("train", 4, 21), ("val", 2, 22)):
        write_dataset(str(work / "data" / split), count, seed, workers=1)
    info = _run([lhrcnn, "info"], cwd=str(work)).stdout
    assert "not loaded" not in info and "custom ops" in info, info
    assert str(tmp_path / "venv") in info, info  # the installed package, not the checkout
    _run([lhrcnn, "new-experiment", "experiments/me/shapes", "--from",
          os.path.join(ROOT, "experiments/templates/thundernet.snet146.coco_json"),
          "--set", "train_annotations=data/train/annotations.json", "--set", "train_images=data/train/images",
          "--set", "eval_annotations=data/val/annotations.json", "--set", "eval_images=data/val/images"],
         cwd=str(work))
    trained = _run([lhrcnn, "train", "--experiment", "experiments/me/shapes", "--set", "precise_bn_batches=2",
                    "--steps", "3"], cwd=str(work))
    assert glob.glob(str(work / "output/me/shapes/model_dump/*.index")), trained.stderr[-3000:]
    image = sorted(glob.glob(str(work / "data/val/images/*.jpg")))[0]
    _run([lhrcnn, "predict", "--experiment", "experiments/me/shapes", image, "--output", "out"], cwd=str(work))
    name = os.path.splitext(os.path.basename(image))[0]
    report = json.loads((work / "out" / f"{name}_detections.json").read_text())
    assert report["detections"] is not None and (work / "out" / f"{name}_detections.png").exists()


@pytest.mark.slow
def test_editable_install_builds_the_ops_in_place(clean_copy, tmp_path):
    py = _venv(str(tmp_path / "venv"))
    env = dict(QUIET, LHRCNN_REQUIRE_OPS="1")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-build-isolation", "-e",
          clean_copy], env=env, cwd=str(tmp_path))
    assert os.path.exists(os.path.join(clean_copy, "lhrcnn", "_lhrcnn_ops.so"))
    out = _run([py, "-c", IMPORT_CHECK], cwd=str(tmp_path)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["file"] == os.path.join(clean_copy, "lhrcnn", "__init__.py"), result["file"]


# ----------------------------------------------------------------------------- fast tests


def _fake_package(tmp_path, record, with_library):
    """Imports a copy of lhrcnn/ops.py (it imports nothing else of lhrcnn) in tmp_path/lhrcnn/ with
    the given build record and, optionally, the checkout's library, in a fresh interpreter.
    Returns (build_info() plus the backend resolve_backend() picks, stderr of the import alone)."""
    pkg = tmp_path / "lhrcnn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(os.path.join(ROOT, "lhrcnn", "ops.py"), pkg / "ops.py")
    if record is not None:
        (pkg / "_lhrcnn_ops.json").write_text(json.dumps(record))
    if with_library:
        os.symlink(os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.so"), pkg / "_lhrcnn_ops.so")
    code = ("import json, sys, lhrcnn.ops as o\n"
            "sys.stderr.write('@@imported\\n')\n"
            "assert o.__file__.startswith(%r), o.__file__\n"
            "print(json.dumps(dict(o.build_info(), resolved=o.resolve_backend())))\n" % str(pkg))
    proc = _run([sys.executable, "-c", code], cwd=str(tmp_path), env=dict(QUIET, PYTHONPATH=str(tmp_path)))
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr.split("@@imported")[0]


def _other_tf_version():
    major, minor = tf.__version__.split(".")[:2]
    return f"{major}.{int(minor) - 1}.0"


def test_import_warns_in_one_line_when_built_against_another_tensorflow(tmp_path):
    old = _other_tf_version()
    info, stderr = _fake_package(tmp_path, {"built": True, "error": None, "tensorflow": old, "cuda": False},
                                 with_library=True)
    lines = [line for line in stderr.splitlines() if old in line]
    assert len(lines) == 1, stderr
    for part in (f"TensorFlow {old}", f"TensorFlow {tf.__version__}",
                 "pip install --force-reinstall --no-deps .", "make ops"):
        assert part in lines[0], (part, lines[0])
    # Another major.minor: the library is not loaded and the twins run.
    assert info["loaded"] is False and info["resolved"] == "tf", info
    assert info["version_match"] is False and info["tensorflow_built"] == old, info
    assert old in info["load_error"] and tf.__version__ in info["load_error"], info


def test_import_is_silent_when_the_versions_match(tmp_path):
    info, stderr = _fake_package(tmp_path, {"built": True, "error": None, "tensorflow": tf.__version__,
                                            "cuda": False}, with_library=True)
    assert "WARNING: lhrcnn" not in stderr, stderr
    assert info["loaded"] is True and info["version_match"] is True and info["resolved"] == "custom", info


def test_failed_build_reason_reaches_build_info(tmp_path):
    reason = "no C++ compiler: `g++` is not on PATH (install g++ or set CXX)"
    info, _ = _fake_package(tmp_path, {"built": False, "error": reason, "tensorflow": tf.__version__,
                                       "cuda": False}, with_library=False)
    assert info["loaded"] is False and info["built"] is False and info["resolved"] == "tf", info
    assert info["build_error"] == reason and reason in info["load_error"], info


def test_build_without_a_compiler_records_why_and_succeeds(tmp_path):
    """setup.py's build, as pip runs it: no compiler -> no library, a record saying why, no error."""
    for path in ("setup.py", "pyproject.toml", "README.md", "lhrcnn/__init__.py"):
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        shutil.copy(os.path.join(ROOT, path), tmp_path / path)
    shutil.copytree(os.path.join(ROOT, "ops", "kernels"), tmp_path / "ops" / "kernels")
    dest = tmp_path / "out" / "lhrcnn"
    dest.mkdir(parents=True)
    (dest / "_lhrcnn_ops.so").write_text("a library of an earlier build")
    env = dict(QUIET, CXX=str(tmp_path / "no-such-compiler"), LHRCNN_CUDA="0")
    _run([sys.executable, "-c", f"import setup; setup.build_ops({str(dest)!r}, required=False)"],
         cwd=str(tmp_path), env=env)
    record = json.loads((dest / "_lhrcnn_ops.json").read_text())
    assert record["built"] is False and "no-such-compiler" in record["error"], record
    assert record["tensorflow"] == tf.__version__, record
    assert not (dest / "_lhrcnn_ops.so").exists()  # the earlier library would not match
    # `setup.py build_ops` (make install's path) fails instead, with the reason.
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ops"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no-such-compiler" in proc.stderr, (proc.returncode, proc.stderr)
