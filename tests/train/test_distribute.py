"""tf.distribute training, proven on CPU:

- two logical CPU devices under MirroredStrategy with 1 image per replica update the weights
  exactly as one device with both images (frozen BN; a trained BN with synchronised statistics),
  and differ when trained BNs are not synchronised (the control); synchronised ConvBN layers
  match the fused BN of the whole batch;
- two worker processes on loopback ports (MultiWorkerMirroredStrategy from TF_CONFIG) end with
  identical weights and the chief's checkpoint restores them; a worker killed mid-run is
  recovered by restarting the job, which resumes from the last checkpoint;
- strategy selection, chief election and TF_CONFIG errors; the data position on resume; the
  per-image loss normalisation; mixed precision and XLA options train.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from lhrcnn import losses
from benchmarks.distribute_bench import free_ports
from lhrcnn.train import distribute

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SYNTHETIC = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")


def _equivalence(mode):
    out = subprocess.run([sys.executable, os.path.join(HERE, "..", "support", "distributed_equivalence.py"), mode],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow(seconds=23)
def test_two_replicas_of_one_image_equal_one_device_with_two_frozen_bn():
    result = _equivalence("frozen_bn")
    assert result["max_rel_update"] > 1e-3, result  # the step moved the weights: equality is not trivial
    assert result["max_rel_diff"]["trainable"] < 1e-5, result
    assert result["max_rel_diff"]["statistics"] == 0.0, result  # frozen: never updated


@pytest.mark.slow(seconds=26)
def test_two_replicas_equal_one_device_with_synchronised_batch_norm():
    """The thin map's trained BatchNorm synchronised (Keras BN, `synchronized`)."""
    result = _equivalence("sync_bn")
    assert result["max_rel_update"] > 1e-3, result
    assert result["max_rel_diff"]["trainable"] < 1e-5, result
    assert result["max_rel_diff"]["statistics"] < 1e-5, result  # moving mean / variance of the global batch


@pytest.mark.slow(seconds=30)
def test_without_synchronisation_trained_batch_norm_differs():
    """The control: per-replica BN statistics (1 image) are not those of the 2-image batch."""
    result = _equivalence("unsynced_bn")
    assert result["max_rel_diff"]["trainable"] > 1e-3, result


def test_synchronised_convbn_matches_the_fused_batch_of_both_images():
    """lhrcnn's ConvBN (all backbone BNs) with `bn_sync`: gradients and moving statistics."""
    result = _equivalence("convbn_stack")
    assert result["max_rel_diff"]["trainable"] < 1e-5, result
    assert result["max_rel_diff"]["statistics"] < 1e-5, result
    assert result["max_rel_update"] > 0.1, result  # the statistics did move


# ---------------------------------------------------------------------------- selection


def test_auto_strategy_resolution():
    cluster = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    single = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribute.resolve_strategy_name("auto", 0, config={}) == "one_device"
    assert distribute.resolve_strategy_name("auto", 1, config={}) == "one_device"
    assert distribute.resolve_strategy_name("auto", 4, config={}) == "mirrored"
    assert distribute.resolve_strategy_name("auto", 4, num_gpus=1, config={}) == "one_device"
    assert distribute.resolve_strategy_name("auto", 0, cpu_replicas=2, config={}) == "mirrored"
    assert distribute.resolve_strategy_name("auto", 8, config=cluster) == "multi_worker"
    assert distribute.resolve_strategy_name("auto", 0, config=single) == "one_device"
    assert distribute.resolve_strategy_name("mirrored", 0, config=cluster) == "mirrored"
    with pytest.raises(ValueError, match="unknown strategy 'towers'"):
        distribute.resolve_strategy_name("towers", 0, config={})


def test_chief_election():
    assert distribute.chief_task({"worker": ["a:1", "b:2"]}) == ("worker", 0)
    assert distribute.chief_task({"chief": ["c:1"], "worker": ["a:1"]}) == ("chief", 0)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert distribute.is_chief(one)
    assert distribute.worker_directory("/x/model_dump", one) == "/x/model_dump"


def test_tf_config_errors(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}))
    with pytest.raises(ValueError, match="no 'task'"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 2}}))
    with pytest.raises(ValueError, match="task index 2 is outside the 2 worker"):
        distribute.make_strategy("multi_worker")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="multi_worker strategy needs TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="GPU"):
        distribute.make_strategy("mirrored", num_gpus=64)


def test_train_script_rejects_a_bad_strategy_setup(tmp_path):
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": ["localhost:1"]}}))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/train.py"), "--experiment", SYNTHETIC,
                          "--output", str(tmp_path), "--strategy", "multi_worker"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1
    assert "error: --strategy multi_worker: TF_CONFIG has no 'task'" in out.stderr + out.stdout


# ---------------------------------------------------------------------------- losses


def test_per_image_losses_are_the_mean_of_single_image_losses():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 50, 2)).astype(np.float32)
    deltas = rng.normal(size=(2, 50, 4)).astype(np.float32)
    labels = rng.choice([-1, 0, 1], size=(2, 50), p=[0.5, 0.4, 0.1]).astype(np.int32)
    labels[1, :45] = -1  # image 1 has few labelled anchors: the two normalisations differ
    targets = rng.normal(size=(2, 50, 4)).astype(np.float32)
    per_image = losses.rpn_losses(logits, deltas, labels, targets, per_image=True)
    singles = [losses.rpn_losses(logits[i:i + 1], deltas[i:i + 1], labels[i:i + 1], targets[i:i + 1])
               for i in range(2)]
    for j in range(2):
        np.testing.assert_allclose(float(per_image[j]), np.mean([float(s[j]) for s in singles]), rtol=1e-6)
    batch = losses.rpn_losses(logits, deltas, labels, targets)
    assert abs(float(batch[0]) - float(per_image[0])) > 1e-3

    # OHEM: each image keeps its own top k; the result is the mean of the images' losses
    r, c = 30, 4
    cls = rng.normal(size=(r, c)).astype(np.float32)
    box = rng.normal(size=(r, 4 * c)).astype(np.float32)
    roi_labels = rng.integers(0, c, size=r).astype(np.int32)
    box_targets = rng.normal(size=(r, 4 * c)).astype(np.float32)
    valid = rng.random(r) > 0.2
    image = np.repeat([0, 1], [12, 18]).astype(np.int32)
    per = losses.ohem_rcnn_losses(cls, box, roi_labels, box_targets, valid, top_k=5, image_index=image,
                                  num_images=2)
    alone = [losses.ohem_rcnn_losses(cls[image == i], box[image == i], roi_labels[image == i],
                                     box_targets[image == i], valid[image == i], top_k=5) for i in range(2)]
    for j in range(2):
        np.testing.assert_allclose(float(per[j]), np.mean([float(a[j]) for a in alone]), rtol=1e-6)
    plain = losses.rcnn_losses(cls, box, roi_labels, box_targets, valid, image_index=image, num_images=2)
    alone = [losses.rcnn_losses(cls[image == i], box[image == i], roi_labels[image == i],
                                box_targets[image == i], valid[image == i]) for i in range(2)]
    for j in range(2):
        np.testing.assert_allclose(float(plain[j]), np.mean([float(a[j]) for a in alone]), rtol=1e-6)


# ---------------------------------------------------------------------------- options


def _one_step(tmp_path, **overrides):
    from lhrcnn.train.trainer import Trainer
    from test_trainer import DETERMINISTIC, _batch_fn
    fn, _ = _batch_fn()
    trainer = Trainer(SYNTHETIC, output_dir=str(tmp_path), train_dataset=fn, total_steps=2,
                      **dict(DETERMINISTIC, **overrides))
    before = [v.numpy() for v in trainer.variables]
    result = trainer.train()
    return trainer, before, result


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_backbone_with_float32_losses(tmp_path, policy):
    trainer, before, result = _one_step(tmp_path, mixed_precision=policy)
    backbone = trainer.detector.backbone
    assert any(layer.compute_dtype == policy.split("_")[1] for layer in backbone.submodules
               if hasattr(layer, "compute_dtype"))
    assert all(v.dtype == tf.float32 for v in trainer.detector.variables)
    assert np.isfinite(result["losses"]["total"])
    features = trainer.detector.features(tf.zeros([1, 64, 64, 3]))
    assert all(f.dtype == tf.float32 for f in features.values())
    assert trainer.loss_scaling == (policy == "mixed_float16")
    assert int(trainer.optimizer.iterations.numpy()) == 2  # a skipped float16 step still counts (resume)
    moved = sum(not np.array_equal(v.numpy(), b) for v, b in zip(trainer.variables, before))
    if policy == "mixed_float16":
        # dynamic loss scaling starts at 2^15: steps whose scaled gradients overflow are skipped
        # and halve the scale, so after 2 steps either the weights moved or the scale dropped
        assert moved > 0.9 * len(before) or float(trainer.optimizer.loss_scale) < 2 ** 15
    else:
        assert moved > 0.9 * len(before)


def test_xla_backbone_gives_the_same_step(tmp_path):
    # frozen BNs: with batch statistics this from-scratch backbone is chaotic in float32 (see
    # tests/support/distributed_equivalence.py), so two compilations would not agree closely
    frozen = dict(backbone_options={"freeze_bn": True}, thin_map_norm=None)
    plain, before, a = _one_step(tmp_path / "a", **frozen)
    xla, _, b = _one_step(tmp_path / "b", jit_compile=True, **frozen)
    assert xla.detector.jit_compile_backbone
    np.testing.assert_allclose(a["losses"]["total"], b["losses"]["total"], rtol=1e-5)
    worst = max(float(np.max(np.abs(v.numpy() - w.numpy())) / np.max(np.abs(v.numpy())))
                for v, w in zip(plain.variables, xla.variables))
    moved = max(float(np.max(np.abs(v.numpy() - w0)) / np.max(np.abs(v.numpy())))
                for v, w0 in zip(plain.variables, before))
    assert worst < 1e-4 < moved, (worst, moved)


def test_resume_starts_at_the_data_position(tmp_path):
    """make_dataset(skip=n) continues the uninterrupted stream (images, flips, order) at image n."""
    from lhrcnn.config import load_config
    from lhrcnn.data import synthetic
    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.pipeline import make_dataset
    synthetic.write_dataset(str(tmp_path / "d"), 7, 5)
    data = load_coco(str(tmp_path / "d/annotations.json"), str(tmp_path / "d/images"))
    for cache in (False, True):
        config = load_config(SYNTHETIC, image_short_size=64, image_max_size=96, cache_decoded_images=cache,
                             group_by_aspect_ratio=False)
        full = list(make_dataset(data, config, training=True, batch_size=1, seed=4).take(17))
        resumed = list(make_dataset(data, config, training=True, batch_size=1, seed=4, skip=9).take(8))
        for a, b in zip(full[9:], resumed):
            assert int(a["image_id"][0]) == int(b["image_id"][0])
            np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
            np.testing.assert_array_equal(a["gt_boxes"].numpy(), b["gt_boxes"].numpy())


# ---------------------------------------------------------------------------- multi-worker


def _start_workers(exp, output, steps, every, ports):
    from test_end_to_end import _train_cmd
    procs = []
    for index in range(len(ports)):
        env = dict(os.environ, TF_CONFIG=json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}))
        log = open(os.path.join(output, f"worker{index}.log"), "a")
        procs.append((subprocess.Popen(_train_cmd(exp, output, steps, every) + ["--strategy", "multi_worker"],
                                       stdout=log, stderr=subprocess.STDOUT, env=env, text=True), log))
    return procs


def _wait(procs, timeout):
    deadline = time.time() + timeout
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return [proc.returncode for proc, _ in procs]


def _log(output, index):
    with open(os.path.join(output, f"worker{index}.log")) as f:
        return f.read()


def _fingerprints(output):
    found = []
    for index in range(2):
        lines = [line for line in _log(output, index).splitlines() if "model fingerprint" in line]
        found.append(lines[-1].rsplit(" ", 1)[1] if lines else None)
    return found


def _small_experiment(tmp_path):
    from test_end_to_end import _make_experiment
    return _make_experiment(tmp_path, 12, 2, image_short_size=128, image_max_size=160, train_rpn_pre_nms_top_n=300,
                            train_rpn_post_nms_top_n=32, ohem_top_k=16, warmup_iters=2, nr_image_per_epoch=40,
                            max_epoch=2, lr_stages=((1, 1.0), (2, 0.1)), precise_bn_batches=2,
                            train_batch_per_gpu=1)


@pytest.mark.slow(seconds=40)
def test_two_workers_end_with_identical_weights_and_a_restorable_checkpoint(tmp_path):
    from lhrcnn.detector import load_detector
    exp = _small_experiment(tmp_path)
    output = str(tmp_path / "out")
    os.makedirs(output)
    codes = _wait(_start_workers(exp, output, 6, 3, free_ports(2)), timeout=600)
    assert codes == [0, 0], _log(output, 0)[-3000:] + _log(output, 1)[-3000:]
    chief, other = _log(output, 0), _log(output, 1)
    assert "2 replica(s) x 1 images (multi_worker, worker 0 (chief))" in chief, chief[-2000:]
    assert "(multi_worker, worker 1)" in other
    prints = _fingerprints(output)
    assert prints[0] and prints[0] == prints[1], prints
    model_dump = os.path.join(output, "model_dump")
    assert sorted(f for f in os.listdir(model_dump) if f.endswith(".index")) == ["ckpt-3.index", "ckpt-6.index"]
    assert not [f for f in os.listdir(model_dump) if f.startswith(".tmp_worker")]  # non-chief copies removed
    detector = load_detector(exp, os.path.join(model_dump, "ckpt-6"))
    assert distribute.model_fingerprint(detector) == prints[0]


@pytest.mark.slow(seconds=70)
def test_a_killed_worker_is_recovered_by_restarting_the_job(tmp_path):
    exp = _small_experiment(tmp_path)
    output = str(tmp_path / "out")
    os.makedirs(output)
    procs = _start_workers(exp, output, 12, 4, free_ports(2))
    index = os.path.join(output, "model_dump", "ckpt-4.index")
    deadline = time.time() + 600
    while not os.path.exists(index) and all(p.poll() is None for p, _ in procs) and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(index), _log(output, 0)[-3000:] + _log(output, 1)[-3000:]
    procs[1][0].send_signal(signal.SIGKILL)  # a worker dies without any chance to clean up
    # The chief cannot finish alone: it stops with an error naming the lost worker, or, if it
    # has not noticed within a minute, the job (as a scheduler would) is torn down.
    codes = _wait(procs, timeout=60)
    assert codes[0] != 0
    if codes[0] == 1:  # it noticed: a clear message, not a hang or a traceback
        assert "the cluster lost a worker" in _log(output, 0) and "Restart the job" in _log(output, 0)
    state = tf.train.get_checkpoint_state(os.path.join(output, "model_dump"))
    resumed_at = int(state.model_checkpoint_path.rsplit("-", 1)[1])
    assert 4 <= resumed_at < 12
    tf.train.load_checkpoint(state.model_checkpoint_path)  # complete, whatever moment the kill hit
    codes = _wait(_start_workers(exp, output, 12, 4, free_ports(2)), timeout=600)
    assert codes == [0, 0], _log(output, 0)[-3000:] + _log(output, 1)[-3000:]
    chief = _log(output, 0)
    assert f"steps {resumed_at} -> 12" in chief, chief[-2000:]
    assert tf.train.latest_checkpoint(os.path.join(output, "model_dump")).endswith("ckpt-12")
    prints = _fingerprints(output)
    assert prints[0] and prints[0] == prints[1], prints
