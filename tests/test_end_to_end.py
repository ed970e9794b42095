"""End to end on small synthetic data (slow, still run in CI): training survives a SIGKILL and
resumes from its last checkpoint; a few minutes of training through the scripts lift AP50 far
above chance."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic")


def _make_experiment(tmp_path, train_images, val_images, eval_on_train=False, experiment=EXPERIMENT, **fields):
    """A copy of a synthetic experiment (default: light_head_rcnn.xception_star.synthetic) pointing
    at small datasets in tmp_path (evaluating on the training images when eval_on_train)."""
    for name, count, seed in (("train", train_images, 11), ("val", val_images, 12)):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/make_synthetic_dataset.py"), "--output",
                        str(tmp_path / name), "--num-images", str(count), "--seed", str(seed)], check=True,
                       capture_output=True)
    exp = tmp_path / "exp"
    exp.mkdir()
    with open(os.path.join(experiment, "network_desp.py")) as f:
        (exp / "network_desp.py").write_text(f.read())
    lines = [f"    {k} = {v!r}" for k, v in dict(
        train_annotations=str(tmp_path / "train/annotations.json"), train_images=str(tmp_path / "train/images"),
        eval_annotations=str(tmp_path / ("train" if eval_on_train else "val") / "annotations.json"),
        eval_images=str(tmp_path / ("train" if eval_on_train else "val") / "images"),
        **fields).items()]
    (exp / "config.py").write_text(
        "import importlib.util\n"
        f"_spec = importlib.util.spec_from_file_location('_base_synthetic', {os.path.join(experiment, 'config.py')!r})\n"
        "_base = importlib.util.module_from_spec(_spec)\n_spec.loader.exec_module(_base)\n\n\n"
        "class SmallConfig(_base.ExperimentConfig):\n" + "\n".join(lines) + "\n")
    return str(exp)


def _train_cmd(exp, output, steps, every):
    return [sys.executable, os.path.join(ROOT, "scripts/train.py"), "--experiment", exp, "--output", output,
            "--steps", str(steps), "--checkpoint_every", str(every), "--log_every", "1"]


def _train_and_evaluate(exp, output, steps, timeout):
    """scripts/train.py for `steps`, then scripts/test.py on the experiment's eval set; both must
    succeed. Returns (the training log, eval_dump metrics)."""
    out = subprocess.run(_train_cmd(exp, output, steps, 1000), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    train_log = out.stdout
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/test.py"), "--experiment", exp,
                          "--checkpoint", os.path.join(output, "model_dump"), "--output", os.path.join(output, "eval")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    with open(os.path.join(output, "eval", "metrics.json")) as f:
        return train_log, json.load(f)


@pytest.mark.slow(seconds=50)
def test_training_resumes_after_a_kill(tmp_path):
    exp = _make_experiment(tmp_path, 12, 4, image_short_size=192, image_max_size=256, train_rpn_pre_nms_top_n=300,
                           train_rpn_post_nms_top_n=64, ohem_top_k=32, warmup_iters=5, nr_image_per_epoch=20,
                           max_epoch=4, lr_stages=((3, 1.0), (4, 0.1)))
    output = str(tmp_path / "out")
    proc = subprocess.Popen(_train_cmd(exp, output, 40, 10), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    index = os.path.join(output, "model_dump", "ckpt-10.index")
    while not os.path.exists(index) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(index), proc.communicate()[0][-3000:] if proc.poll() is not None else "no checkpoint in time"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    state = tf.train.get_checkpoint_state(os.path.join(output, "model_dump"))
    killed_at = int(state.model_checkpoint_path.rsplit("-", 1)[1])
    assert 10 <= killed_at < 40
    # The latest checkpoint is complete (readable), whatever moment the kill hit.
    tf.train.load_checkpoint(state.model_checkpoint_path)
    out = subprocess.run(_train_cmd(exp, output, 40, 10), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert f"ckpt-{killed_at}" in log and f"steps {killed_at} -> 40" in log, log[-2000:]
    assert tf.train.latest_checkpoint(os.path.join(output, "model_dump")).endswith("ckpt-40")


@pytest.mark.slow(seconds=110)
def test_a_few_minutes_of_training_lift_ap50_far_above_chance(tmp_path):
    """scripts/train.py then scripts/test.py on 8 synthetic images (~40 objects), evaluated on those
    same images: it checks that the whole chain (pipeline, targets, losses, optimizer, precise BN,
    inference, COCO conversion) learns, in 250 steps (the last 40 at a tenth of the rate) on images
    resized to 256 px (the family checks' size). Random or constant detections score AP50 < 0.01
    here; a broken box coding, class mapping or flip convention stays far below 0.5. Measured on 2
    cores with the config's seed 3 and with seed 1: AP 0.574 / 0.392, AP50 0.921 / 0.701 (at the
    config's 320 px: AP 0.645 / 0.502, AP50 0.944 / 0.836, and 1.25x the time)."""
    exp = _make_experiment(tmp_path, 8, 1, eval_on_train=True, basic_lr=0.003, warmup_iters=50,
                           nr_image_per_epoch=40, max_epoch=10, lr_stages=((8, 1.0), (10, 0.1)),
                           precise_bn_batches=20, image_short_size=256, image_max_size=384,
                           eval_image_short_size=256, eval_image_max_size=384)
    output = str(tmp_path / "out")
    train_log, metrics = _train_and_evaluate(exp, output, 250, timeout=1200)
    assert "precise BN" in train_log
    assert metrics["images"] == 8
    assert metrics["AP50"] >= 0.5 and metrics["AP"] >= 0.25, metrics


# The family's synthetic variants: steps and images per epoch of the 8-image check (the rate drops
# tenfold 8 epochs after the 50 warm-up steps), and about how long each test takes on 2 cores (a
# scheduling hint for parallel runs). ThunderNet at 300 steps, measured with seeds 3 and 1:
# AP 0.504 / 0.449, AP50 0.780 / 0.760. DetNet at 250 steps (rate 0.002) and Double-Head at 200
# (rate 0.002) did not reach the bar: they keep their schedules. Double-Head samples 64 RoIs per
# image here instead of its config's 128 (its conv head on the RoIs is most of its step: 0.92 ->
# 0.53 s): AP 0.440 / 0.413, AP50 0.875 / 0.781 with seeds 3 and 1 (0.513 / 0.891 with 128, seed 3).
FAMILY = {
    "thundernet.snet146.synthetic": dict(steps=300, nr_image_per_epoch=50, seconds=85),
    "detnet59.fpn.synthetic": dict(steps=400, nr_image_per_epoch=80, seconds=145),
    "double_head.r50_fpn.synthetic": dict(steps=300, nr_image_per_epoch=80, seconds=200,
                                          overrides=dict(roi_batch_size_per_image=64)),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow(seconds=FAMILY[name]["seconds"]))
                                  for name in sorted(FAMILY)])
def test_family_variant_learns_and_exports(tmp_path, name):
    """Each family detector's synthetic variant through the scripts: scripts/train.py for a few
    minutes on 8 synthetic images, scripts/test.py on those images (AP50 far above chance, as in
    the Xception* check above), then scripts/export.py: the SavedModel answers what the trained
    detector answers in-process."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import export_fixtures as fx

    from lhrcnn.detector import load_detector
    exp = _make_experiment(tmp_path, 8, 1, eval_on_train=True, experiment=os.path.join(ROOT, "experiments/lhrcnn", name),
                           warmup_iters=50, nr_image_per_epoch=FAMILY[name]["nr_image_per_epoch"], max_epoch=10,
                           lr_stages=((8, 1.0), (10, 0.1)), precise_bn_batches=20, image_short_size=256,
                           image_max_size=384, eval_image_short_size=256, eval_image_max_size=384,
                           **FAMILY[name].get("overrides", {}))
    output = str(tmp_path / "out")
    _, metrics = _train_and_evaluate(exp, output, FAMILY[name]["steps"], timeout=1500)
    print(name, metrics)
    assert metrics["images"] == 8
    assert metrics["AP50"] >= 0.5 and metrics["AP"] >= 0.25, metrics

    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/export.py"), "--experiment", exp, "--checkpoint",
                          os.path.join(output, "model_dump"), "--output", str(tmp_path / "served")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    served = tf.saved_model.load(str(tmp_path / "served" / "1"))
    with open(os.path.join(tmp_path, "train", "annotations.json")) as f:
        images = json.load(f)["images"][:2]
    detector = load_detector(exp, checkpoint=os.path.join(output, "model_dump"), ops_backend="tf")
    ids = [0] + list(range(1, detector.config.num_classes))  # the synthetic set's category ids are 1..6
    for record in images:
        image = tf.io.decode_image(tf.io.read_file(os.path.join(tmp_path, "train", "images", record["file_name"])),
                                   channels=3).numpy()
        expected = fx.reference_outputs(detector, [image], ids)
        assert expected["num_detections"][0] > 0
        answer = served.signatures["serving_default"](images=tf.constant(image[None]))
        fx.assert_same_detections({k: v.numpy() for k, v in answer.items()}, expected, record["file_name"])
