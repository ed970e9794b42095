"""tf.distribute benchmark: training steps/s and images/s of the default experiment on
1 and 2 logical CPU devices (one_device / MirroredStrategy) and on 1 and 2 local worker
processes (MultiWorkerMirroredStrategy over loopback gRPC), with the scaling efficiency; and an
estimate of the gradient all-reduce cost per step of the R-101 model on 8 GPUs.

Every case runs in fresh processes (logical devices and the collective runtime are fixed when
TensorFlow starts), on the same fixed batch of random images (2 per replica) so that only the
step is timed, never the input pipeline. On a machine with C cores, C replicas share the cores a
single replica already used, so the efficiency measured here is a lower bound of what separate
GPUs give; it shows the overhead of the all-reduce and of the replicated step.

  python -m benchmarks.distribute_bench --case one_device|mirrored|worker --steps N [--height H --width W]
(one case, prints a JSON line; `run()` drives all cases.)
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")
R101 = os.path.join(ROOT, "experiments/lizeming/light_head_rcnn.ori_res101.coco.ps_roialign")

COLUMNS = [("case", "case", "{}"), ("replicas", "replicas", "{}"), ("global_batch", "images/step", "{}"),
           ("steps_per_s", "steps/s", "{:.3f}"), ("images_per_s", "images/s", "{:.2f}"),
           ("efficiency", "scaling efficiency", "{:.0%}")]

# Ring all-reduce moves 2 (n - 1) / n of the gradient bytes in and out of every device.
LINKS = {"100 Gb/s Ethernet / InfiniBand (12.5 GB/s)": 12.5e9,
         "NVLink, A100 (300 GB/s per direction)": 300e9,
         "NVLink, H100 (450 GB/s per direction)": 450e9}


def _case(args):
    """One benchmark process: builds the strategy, times `steps` training steps."""
    if args.case == "mirrored":
        from lhrcnn.train.distribute import set_cpu_replicas
        set_cpu_replicas(args.replicas)
    import numpy as np
    import tensorflow as tf

    from benchmarks.model_bench import random_ground_truth
    from lhrcnn.train.distribute import make_strategy
    from lhrcnn.train.trainer import Trainer
    strategy = make_strategy({"one_device": "one_device", "mirrored": "mirrored",
                              "worker": "multi_worker"}[args.case])

    def dataset_fn(ctx, per_replica, seed):
        rng = np.random.default_rng(ctx.input_pipeline_id)
        boxes, classes = random_ground_truth(rng, per_replica, args.height, args.width, 6)
        element = {"images": rng.normal(0, 40, (per_replica, args.height, args.width, 3)).astype(np.float32),
                   "image_info": np.tile(np.array([[args.height, args.width, 1.0, args.height, args.width]],
                                                  np.float32), (per_replica, 1)),
                   "gt_boxes": boxes, "gt_classes": classes, "image_id": np.arange(per_replica, dtype=np.int64)}
        return tf.data.Dataset.from_tensors(element).repeat()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(SYNTHETIC, output_dir=tmp, strategy=strategy, train_dataset=dataset_fn)
        iterator = iter(trainer.distributed_dataset(seed=0))
        for _ in range(args.warmup):
            float(trainer._train_step(iterator)["total"])
        start = time.perf_counter()
        for _ in range(args.steps):
            float(trainer._train_step(iterator)["total"])
        seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({"replicas": trainer.replicas, "global_batch": trainer.global_batch,
                      "s_per_step": seconds}), flush=True)


def free_ports(n):
    """n currently free TCP ports on localhost (for loopback clusters)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _command(case, steps, warmup, height, width, replicas=1):
    return [sys.executable, "-m", "benchmarks.distribute_bench", "--case", case, "--steps", str(steps),
            "--warmup", str(warmup), "--height", str(height), "--width", str(width), "--replicas", str(replicas)]


def _last_json(text, what):
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{what} printed no result:\n{text[-3000:]}")


def _run_local(case, steps, warmup, height, width, replicas=1):
    out = subprocess.run(_command(case, steps, warmup, height, width, replicas), capture_output=True, text=True,
                         cwd=ROOT, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{case} failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return _last_json(out.stdout, case)


def _run_workers(count, steps, warmup, height, width):
    ports = free_ports(count)
    procs = []
    for index in range(count):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                                     "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(_command("worker", steps, warmup, height, width), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env))
    outputs = [p.communicate(timeout=1800) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        if p.returncode:
            raise RuntimeError(f"worker failed:\n{out[-2000:]}{err[-3000:]}")
    results = [_last_json(out, "worker") for out, _ in outputs]
    return max(results, key=lambda r: r["s_per_step"])  # the job is as fast as its slowest worker


def communication_estimate(num_gpus=8):
    """Gradient bytes per step of the R-101 Light-Head model and its ring all-reduce time."""
    import numpy as np

    from lhrcnn.detector import build_detector
    detector = build_detector(R101)
    params = int(sum(np.prod(v.shape) for v in detector.trainable_variables))
    grad_bytes = 4 * params  # float32 gradients
    moved = 2 * (num_gpus - 1) / num_gpus * grad_bytes
    return {"model": "Light-Head R-CNN R-101 (PS-RoI-Align, COCO)", "trainable_parameters": params,
            "gradient_bytes": grad_bytes, "gpus": num_gpus, "bytes_per_gpu_per_step": moved,
            "allreduce_ms": {name: 1e3 * moved / bandwidth for name, bandwidth in LINKS.items()}}


def run(steps=10, warmup=3, height=320, width=448):
    one = _run_local("one_device", steps, warmup, height, width)
    two = _run_local("mirrored", steps, warmup, height, width, replicas=2)
    one_worker = _run_workers(1, steps, warmup, height, width)
    two_workers = _run_workers(2, steps, warmup, height, width)
    rows = []
    for case, result, base in (("1 device", one, one), ("2 logical CPU devices (mirrored)", two, one),
                               ("1 worker (multi_worker)", one_worker, one_worker),
                               ("2 local workers (multi_worker, loopback)", two_workers, one_worker)):
        ips = result["global_batch"] / result["s_per_step"]
        base_ips = base["global_batch"] / base["s_per_step"]
        rows.append(dict(case=case, replicas=result["replicas"], global_batch=result["global_batch"],
                         steps_per_s=1 / result["s_per_step"], images_per_s=ips,
                         efficiency=ips / (base_ips * result["replicas"] / base["replicas"])))
    return rows, {"input": f"{height}x{width}", "cpus": os.cpu_count(), "steps": steps,
                  "communication": communication_estimate()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", required=True, choices=["one_device", "mirrored", "worker"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--replicas", type=int, default=2)
    _case(parser.parse_args())


if __name__ == "__main__":
    main()
