"""The peer environment for `scripts/benchmark.py --peer`: TF Model Garden
(tf-models-official 2.20.0 on TensorFlow 2.20.0) in its own virtual environment, and a runner for
benchmarks/peer_model_garden.py inside it.

  from benchmarks import peer_env
  python = peer_env.ensure_peer_env()          # creates .venv-peer once (1.5-2.5 min, 3.4 GB)
  results = peer_env.run_peer(repeats=5)       # {"faster_rcnn_r50_fpn_800x1333_s": ..., ...}

Only `--peer` calls this: `make install` and the tests never do. The environment is a plain venv
made with the running interpreter, then `pip install --no-deps -r peer_requirements.txt` (every
package pinned, so the set is exactly the lock's). A stamp file inside the venv records the lock's
hash; a venv whose stamp matches is reused as is (a second call takes milliseconds), anything
else (missing, half-installed, lock changed) is rebuilt from scratch. Importing this module needs
neither TensorFlow nor lhrcnn's ops.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
REQUIREMENTS = os.path.join(BENCH_DIR, "peer_requirements.txt")
SCRIPT = os.path.join(BENCH_DIR, "peer_model_garden.py")
DEFAULT_PATH = ".venv-peer"
STAMP = ".peer-stamp.json"


class PeerError(RuntimeError):
    """The peer environment could not be installed, or the peer benchmark failed."""


def _abs(path):
    return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def _python(venv):
    return os.path.join(venv, "bin", "python")


def _lock_hash():
    with open(REQUIREMENTS, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _tail(text, lines=25):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _run(cmd, what, timeout, env=None):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = b"".join(x if isinstance(x, bytes) else x.encode() for x in (e.stdout, e.stderr) if x)
        raise PeerError(f"{what}: timed out after {timeout} s: {' '.join(cmd)}\n"
                        f"{_tail(out.decode(errors='replace'))}") from None
    except OSError as e:
        raise PeerError(f"{what}: could not start {cmd[0]}: {e}") from None
    if proc.returncode != 0:
        raise PeerError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                        f"--- last lines of its output ---\n{_tail(proc.stdout + proc.stderr)}")
    return proc


def _run_forwarding(cmd, what, timeout, env, log):
    """Runs cmd, passing its "[peer] ..." progress lines (stderr) to log as they come; returns
    (stdout, stderr). Raises PeerError on a failure or a timeout, with the tail of the output."""
    import threading
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    except OSError as e:
        raise PeerError(f"{what}: could not start {cmd[0]}: {e}") from None
    out, err = [], []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stderr:
            err.append(line)
            if line.startswith("[peer]"):
                log(line.rstrip())
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join()
    stdout, stderr = "".join(out), "".join(err)
    if time.monotonic() >= deadline and proc.returncode != 0:
        raise PeerError(f"{what}: timed out after {timeout} s: {' '.join(cmd)}\n{_tail(stdout + stderr)}")
    if proc.returncode != 0:
        raise PeerError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                        f"--- last lines of its output ---\n{_tail(stdout + stderr)}")
    return stdout, stderr


def read_stamp(path=DEFAULT_PATH):
    """The stamp of a complete peer venv (lock hash, install seconds, size), or None."""
    try:
        with open(os.path.join(_abs(path), STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_peer_env(path=DEFAULT_PATH, python=None, log=None, timeout=1800):
    """Creates (once) the peer venv at `path` (relative paths: to the repository root) and returns
    the path of its python. Idempotent: a venv whose stamp matches peer_requirements.txt is reused.

    python: the interpreter that makes the venv (default: the running one; it must be Python 3.11,
    the version the lock was resolved for). log: a callable for progress lines (default: stderr).
    Raises PeerError with pip's last output lines when the install fails.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    venv = _abs(path)
    lock = _lock_hash()
    stamp = read_stamp(venv)
    if stamp and stamp.get("lock_sha256") == lock and os.path.exists(_python(venv)):
        return _python(venv)

    base = python or sys.executable
    if os.path.exists(venv):
        log(f"[peer] {venv} is stale or incomplete: rebuilding it")
        shutil.rmtree(venv)
    log(f"[peer] creating {venv}: tf-models-official 2.20.0 + TensorFlow 2.20.0, "
        f"{sum(1 for l in open(REQUIREMENTS) if l.strip() and not l.startswith('#'))} pinned packages "
        "(1.5-2.5 min and 3.4 GB the first time)")
    start = time.perf_counter()
    try:
        _run([base, "-m", "venv", venv], "creating the peer venv", timeout=300)
        version = _run([_python(venv), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                       "checking the peer venv's python", timeout=60).stdout.strip()
        if version != "3.11":
            raise PeerError(f"the peer lock ({REQUIREMENTS}) is resolved for Python 3.11, but {base} is Python "
                            f"{version}: pass python=<a Python 3.11 interpreter>")
        _run([_python(venv), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
              "-r", REQUIREMENTS], "installing the peer packages (pip install --no-deps -r "
             "benchmarks/peer_requirements.txt; needs the package index)", timeout=timeout)
        _run([_python(venv), "-c", "import tensorflow, official.vision.modeling.factory"],
             "importing TensorFlow and official.vision in the peer venv", timeout=600)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)  # never leave a half-built venv that looks usable
        raise
    seconds = time.perf_counter() - start
    size = _dir_bytes(venv)
    info = {"lock_sha256": lock, "install_s": round(seconds, 1), "size_bytes": size,
            "python": version, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(os.path.join(venv, STAMP), "w") as f:
        json.dump(info, f)
    log(f"[peer] {venv} ready in {seconds:.0f} s, {size / 2**30:.2f} GiB")
    return _python(venv)


def run_peer(repeats=5, sizes=("800x1333", "512x512"), path=DEFAULT_PATH, warmup=2, timeout=3600, log=None):
    """Ensures the peer venv, runs peer_model_garden.py in it, and returns its json as a dict:
    {"faster_rcnn_r50_fpn_<H>x<W>_s", "gflop_faster_rcnn_r50_fpn_<H>x<W>" for each size,
     "resnet101_backbone_<first size>_s", "gflop_resnet101_backbone_<first size>",
     "details": {...per case: times, min, padded size, GFLOP, conv+matmul GFLOP...},
     "meta": {...versions, config, flop convention...}, "env": {...the venv's stamp...}}.
    Raises PeerError (install or run failure, no json line) with the tail of the script's output.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    python = ensure_peer_env(path, log=log)
    cmd = [python, SCRIPT, "--repeats", str(repeats), "--warmup", str(warmup), "--sizes", ",".join(sizes)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log(f"[peer] running TF Model Garden Faster R-CNN ({', '.join(sizes)}; median of {repeats})")
    what = "the peer benchmark (benchmarks/peer_model_garden.py)"
    stdout, stderr = _run_forwarding(cmd, what, timeout, env, log)
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                results = json.loads(line)
            except ValueError:
                continue
            results["env"] = read_stamp(path)
            return results
    raise PeerError("the peer benchmark printed no json line; last lines of its output:\n"
                    + _tail(stdout + stderr))


if __name__ == "__main__":
    print(json.dumps(run_peer(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=1))
