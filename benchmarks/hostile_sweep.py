"""A sweep of hostile input and faults, with the figures the hardening is judged by:

  ops      seeded fuzz calls of the four ops (tests/support/ops_fuzz.py), both backends, eager and
           tf.function, one child process per seed: calls, clean errors, crashes, hangs,
           backend disagreements, different values where both accept;
  bombs    decompression bombs (a 1.5 MB PNG of 23170 x 23170, a 23 KB GIF of twelve 20000 x 20000
           frames) through decode_image, the data pipeline, read_image and a serve_bytes graph,
           in a child process: outcome and the child's peak memory (VmHWM) before and after;
  kills    `lhrcnn train` killed (SIGKILL) at random moments of a run that saves every step, then
           restarted: every restart resumes from a checkpoint, no ckpt-N_temp/ is left, the state
           file lists existing checkpoints only;
  disks    training and exporting onto a full 8 MB tmpfs and a read-only one (needs `mount`,
           i.e. root; skipped otherwise): one `error:` line, no step done, nothing half-written.

  python -m benchmarks.hostile_sweep [--sections ops,bombs,kills,disks] [--fuzz-seeds 22]
                                     [--fuzz-count 120] [--kills 4] [--json output/hostile_sweep.json]
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent import futures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ_PY = os.path.join(ROOT, "tests", "support", "ops_fuzz.py")
EXPERIMENT = os.path.join(ROOT, "experiments", "lhrcnn", "thundernet.snet146.synthetic")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "support")]),
           TF_CPP_MIN_LOG_LEVEL="3")


def _progress(done, total, started, what):
    rate = done / max(time.time() - started, 1e-9)
    eta = (total - done) / rate if rate else float("inf")
    print(f"  {what}: {done}/{total} ({rate:.2f}/s, ETA {eta:.0f} s)", flush=True)


# ----------------------------------------------------------------------------- ops


def _fuzz_seed(seed, count, timeout):
    try:
        proc = subprocess.run([sys.executable, FUZZ_PY, str(seed), str(count)], capture_output=True, text=True,
                              timeout=timeout, env=ENV)
        hung, returncode, stdout = False, proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        hung, returncode = True, None
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return seed, hung, returncode, [line for line in lines if "done" in line]


def sweep_ops(seeds, count, timeout=900):
    out = {"cases": 0, "calls": 0, "accepted": 0, "clean_errors": 0, "unnamed_errors": 0, "crashes": 0,
           "hangs": 0, "disagreements": 0, "different_values": 0, "examples": []}
    started = time.time()
    with futures.ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_fuzz_seed, seed, count, timeout) for seed in range(seeds)]
        for k, job in enumerate(futures.as_completed(jobs), 1):
            seed, hung, returncode, done = job.result()
            out["hangs"] += int(hung)
            out["crashes"] += int(not hung and (returncode != 0 or len(done) != count))
            for d in done:
                out["cases"] += 1
                out["calls"] += len(d["kinds"])
                kinds = set(d["kinds"].values())
                if not d["agree"]:
                    out["disagreements"] += 1
                    out["examples"].append({"seed": seed, **d})
                elif not d["same"]:
                    out["different_values"] += 1
                    out["examples"].append({"seed": seed, **d})
                if kinds == {"ok"}:
                    out["accepted"] += len(d["kinds"])
                else:
                    errors = sum(v == "error" for v in d["kinds"].values())
                    named = d["error"] and len(d["error"]) > 10
                    out["clean_errors" if named else "unnamed_errors"] += errors
                    out["accepted"] += len(d["kinds"]) - errors
            _progress(k, seeds, started, "fuzz seeds")
    out["examples"] = out["examples"][:5]
    return out


# ----------------------------------------------------------------------------- bombs

_BOMBS_CHILD = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
from image_bombs import gif_frames, png_bomb
from lhrcnn.data import DetectionDataset, ImageRecord, PipelineStats, make_dataset, preprocess
from lhrcnn.predictor import read_image

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

folder = sys.argv[1]
bombs = {"png 23170x23170": png_bomb(23170, 23170), "gif 12 x 20000x20000": gif_frames([(20000, 1), (1, 20000)] + [(1, 1)] * 10)}
from lhrcnn.detector import build_detector
from lhrcnn.export import serving
detector = build_detector(sys.argv[2], ops_backend="tf")
config = detector.config
module = serving.ServingModule(detector, list(range(config.num_classes)))
small = tf.io.encode_png(np.zeros([40, 60, 3], np.uint8)).numpy()
module.serve_bytes(tf.constant([small]))  # traced and run once: the baseline includes the detector
preprocess.decode_image(tf.constant(small))
baseline = peak_mb()
rows = []
for name, raw in bombs.items():
    path = os.path.join(folder, name.split()[0] + "_bomb")
    open(path, "wb").write(raw)
    for where, run in [
            ("decode_image", lambda: preprocess.decode_image(tf.constant(raw))),
            ("read_image (Predictor)", lambda: read_image(path)),
            ("serve_bytes", lambda: module.serve_bytes(tf.constant([small, raw]))),
    ]:
        try:
            run()
            outcome = "decoded"
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            outcome = type(e).__name__ + ": " + " ".join(str(e).split())[:160]
        rows.append({"bomb": name, "bytes": len(raw), "where": where, "outcome": outcome, "peak_mb": peak_mb()})
    records = [ImageRecord(0, path, 20, 20, [[1, 1, 5, 5]], [1])]
    small_path = os.path.join(folder, "small.png")
    open(small_path, "wb").write(small)
    records.append(ImageRecord(1, small_path, 40, 60, [[1, 1, 5, 5]], [1]))
    stats = PipelineStats()
    batches = list(make_dataset(DetectionDataset(records, config.class_names, list(range(config.num_classes)), "x"),
                                config, training=False, batch_size=1, stats=stats))
    rows.append({"bomb": name, "bytes": len(raw), "where": "data pipeline",
                 "outcome": f"{len(batches)} of 2 images kept, too_large {stats.too_large}: "
                            + stats.failed_files.get(path, "")[:100], "peak_mb": peak_mb()})
print(json.dumps({"baseline_peak_mb": baseline, "rows": rows}))
"""


def sweep_bombs():
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.run([sys.executable, "-c", _BOMBS_CHILD, folder, EXPERIMENT], capture_output=True,
                              text=True, env=ENV, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- kills


def _train_command(output, steps):
    return [sys.executable, "-m", "lhrcnn", "train", "--experiment", EXPERIMENT, "--output", output,
            "--steps", str(steps), "--checkpoint-every", "1", "--log-every", "1000",
            "--set", "train_batch_per_gpu=1", "--set", "image_short_size=128", "--set", "image_max_size=128",
            "--set", "nr_image_per_epoch=100", "--set", "cache_decoded_images=False"]


def _checkpoint_state(model_dump):
    path = os.path.join(model_dump, "checkpoint")
    if not os.path.isfile(path):
        return []
    return re.findall(r'all_model_checkpoint_paths: "([^"]+)"', open(path).read())


def _newest_checkpoint(model_dump):
    """The largest N of the ckpt-N.index files in model_dump (0: none)."""
    if not os.path.isdir(model_dump):
        return 0
    numbers = [re.match(r"ckpt-(\d+)\.index$", n) for n in os.listdir(model_dump)]
    return max((int(m.group(1)) for m in numbers if m), default=0)


def sweep_kills(kills, steps=40, seed=0):
    rng = random.Random(seed)
    out = {"kills": 0, "restarts_resumed": 0, "restarts_from_scratch": 0, "stale_temporaries_seen": 0,
           "stale_temporaries_left": 0, "state_entries_missing": 0, "finished": False, "runs": []}
    with tempfile.TemporaryDirectory() as output:
        model_dump = os.path.join(output, "model_dump")
        started = time.time()
        for k in range(kills + 1):
            proc = subprocess.Popen(_train_command(output, steps), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=ENV, cwd=ROOT, start_new_session=True)
            line = ""
            while k < kills:  # wait for training to start ...
                line = proc.stdout.readline()
                if not line or line.startswith("training "):
                    break
            resumed = re.search(r"steps (\d+) ->", line)
            if k < kills:
                # ... and for its first checkpoint (one per step from then on), then kill at a random moment
                before = _newest_checkpoint(model_dump)
                deadline = time.time() + 600
                while time.time() < deadline and proc.poll() is None and _newest_checkpoint(model_dump) <= before:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 3.0))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out["kills"] += 1
                temporaries = [n for n in os.listdir(model_dump) if "_temp" in n or ".tmp" in n] \
                    if os.path.isdir(model_dump) else []
                out["stale_temporaries_seen"] += len(temporaries)
                listed = _checkpoint_state(model_dump)
                missing = [p for p in listed if not os.path.isfile(os.path.join(model_dump, p) + ".index")]
                out["runs"].append({"kill": k + 1, "start": int(resumed.group(1)) if resumed else None,
                                    "temporaries_after_kill": temporaries, "listed": len(listed),
                                    "listed_missing": missing})
            else:
                text, _ = proc.communicate(timeout=1800)
                resumed = re.search(r"steps (\d+) ->", text)
                out["finished"] = proc.returncode == 0 and "trained " in text
                out["runs"].append({"final": True, "start": int(resumed.group(1)) if resumed else None,
                                    "returncode": proc.returncode})
            if k > 0:
                start = out["runs"][-1]["start"]
                out["restarts_resumed" if start else "restarts_from_scratch"] += 1
            _progress(k + 1, kills + 1, started, "training runs")
        out["stale_temporaries_left"] = len([n for n in os.listdir(model_dump) if "_temp" in n or ".tmp" in n])
        listed = _checkpoint_state(model_dump)
        out["state_entries_missing"] = len([p for p in listed if not os.path.isfile(
            os.path.join(model_dump, p) + ".index")])
    return out


# ----------------------------------------------------------------------------- disks


def _mount_tmpfs(path, size="8m"):
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


def sweep_disks():
    if os.geteuid() != 0 or not shutil.which("mount"):
        return {"skipped": "needs root and mount (a tmpfs of 8 MB)"}
    out = {}
    base = tempfile.mkdtemp()
    full = os.path.join(base, "full")
    if not _mount_tmpfs(full):
        shutil.rmtree(base, ignore_errors=True)
        return {"skipped": "mount -t tmpfs failed"}
    try:
        for attempt in (1, 2):
            t = time.time()
            proc = subprocess.run(_train_command(full, 5), capture_output=True, text=True, env=ENV, cwd=ROOT,
                                  timeout=900)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            out[f"train on a full 8 MB disk, try {attempt}"] = {
                "returncode": proc.returncode, "error_lines": errors[:2], "traceback": "Traceback" in proc.stderr,
                "training_started": "training " in proc.stdout, "seconds": round(time.time() - t, 1),
                "left_on_disk": sorted(os.listdir(full))}
        subprocess.run(["umount", full], check=True)
        if not _mount_tmpfs(full, "40m"):  # one checkpoint fits, the second does not
            return {**out, "skipped_fill": "mount -t tmpfs failed"}
        for attempt in (1, 2):
            t = time.time()
            proc = subprocess.run(_train_command(full, 5), capture_output=True, text=True, env=ENV, cwd=ROOT,
                                  timeout=900)
            out[f"train onto a 40 MB disk that fills up, try {attempt}"] = {
                "returncode": proc.returncode, "error_lines": [l for l in proc.stderr.splitlines()
                                                               if l.startswith("error:")][:2],
                "traceback": "Traceback" in proc.stderr, "training_started": "training " in proc.stdout,
                "seconds": round(time.time() - t, 1),
                "left_on_disk": sorted(os.listdir(os.path.join(full, "model_dump")))
                if os.path.isdir(os.path.join(full, "model_dump")) else []}
        subprocess.run(["mount", "-o", "remount,ro", full], check=True)
        proc = subprocess.run(_train_command(os.path.join(full, "run"), 5), capture_output=True, text=True,
                              env=ENV, cwd=ROOT, timeout=900)
        out["train on a read-only disk"] = {
            "returncode": proc.returncode, "error_lines": [l for l in proc.stderr.splitlines()
                                                           if l.startswith("error:")][:2],
            "traceback": "Traceback" in proc.stderr}
    finally:
        subprocess.run(["umount", full], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="ops,bombs,kills,disks")
    parser.add_argument("--fuzz-seeds", type=int, default=22)
    parser.add_argument("--fuzz-count", type=int, default=120)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--json", default=os.path.join("output", "hostile_sweep.json"))
    args = parser.parse_args()
    results = {}
    for section in args.sections.split(","):
        print(f"== {section}", flush=True)
        t = time.time()
        if section == "ops":
            results[section] = sweep_ops(args.fuzz_seeds, args.fuzz_count)
        elif section == "bombs":
            results[section] = sweep_bombs()
        elif section == "kills":
            results[section] = sweep_kills(args.kills)
        elif section == "disks":
            results[section] = sweep_disks()
        else:
            parser.error(f"unknown section {section}")
        results[section]["seconds"] = round(time.time() - t, 1)
        print(json.dumps(results[section], indent=1), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
