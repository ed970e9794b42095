"""The experiment Config: defaults from the original, unknown fields are errors, experiments load."""
import os

import pytest

from lhrcnn.config import Config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = [
    "experiments/lizeming/light_head_rcnn.ori_res101.coco.ps_roialign",
    "experiments/lizeming/light_head_rcnn.ori_res101.coco",
    "experiments/lizeming/rfcn_reproduce.ori_res101.coco.baseline",
    "experiments/lhrcnn/light_head_rcnn.xception_star.synthetic",
]


def test_defaults_are_the_originals_values():
    c = Config()
    assert c.num_classes == 81 and c.num_anchors == 15
    assert c.anchor_scales == (2, 4, 8, 16, 32) and c.anchor_ratios == (0.5, 1.0, 2.0)
    assert (c.train_rpn_pre_nms_top_n, c.train_rpn_post_nms_top_n) == (12000, 2000)
    assert (c.test_rpn_pre_nms_top_n, c.test_rpn_post_nms_top_n) == (6000, 1000)
    assert c.bbox_stds == (0.1, 0.1, 0.2, 0.2) and c.ohem_top_k == 512 and c.rcnn_box_loss_weight == 2.0
    assert c.basic_lr == pytest.approx(1.25e-3) and c.lr_stages == ((19, 1.0), (25, 0.1), (30, 0.01))


def test_misspelled_field_in_a_subclass_names_it():
    class Bad(Config):
        test_nsm = 0.3

    with pytest.raises(ValueError, match=r"'test_nsm'.*did you mean 'test_nms'"):
        Bad()


def test_unknown_override_names_it():
    with pytest.raises(ValueError, match="'anchor_scale'.*'anchor_scales'"):
        Config(anchor_scale=(1, 2))
    assert Config(test_nms=0.3).test_nms == 0.3


def test_bad_values_are_rejected():
    from lhrcnn.builders import build_default_detector
    # part names are registry names: a misspelt one is named, with the closest, before anything is built
    for field, value, hint in (("head", "fpn", "fpn_2fc"), ("backbone", "snet_146", "snet146"),
                               ("neck", "fpm", "fpn"), ("rpn_head", "compresed", "compressed")):
        with pytest.raises(ValueError, match=f"unknown {field} '{value}'; did you mean '{hint}'"):
            build_default_detector(Config(**{field: value}))
    with pytest.raises(ValueError, match="head must be a registered name"):
        Config(head=None)
    with pytest.raises(ValueError, match="divisible"):
        Config(large_separable_out_channels=500)
    for seed in (-1, 2 ** 32, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed must be None or an integer"):
            Config(seed=seed)
    assert Config(seed=None).seed is None and Config(seed=2 ** 32 - 1).seed == 2 ** 32 - 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_load(experiment):
    config = load_config(os.path.join(ROOT, experiment))
    assert config.num_classes >= 2
    assert config.output_dir().endswith(os.path.join(*experiment.split("/")[1:]))


def test_experiment_specific_values():
    ps = load_config(os.path.join(ROOT, EXPERIMENTS[0]))
    pool = load_config(os.path.join(ROOT, EXPERIMENTS[1]))
    rfcn = load_config(os.path.join(ROOT, EXPERIMENTS[2]))
    assert (ps.roi_pooling, ps.test_nms) == ("ps_roi_align", 0.5)
    assert (pool.roi_pooling, pool.test_nms) == ("ps_roi_pool", 0.3)
    assert (rfcn.head, rfcn.test_nms) == ("rfcn", 0.3)


def test_missing_experiment_dir():
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_config("no/such/dir")


def test_an_experiment_extends_a_sibling(tmp_path):
    """config.py may extend another experiment's config (base_experiment_config), e.g. the ThunderNet
    SNet49/535 COCO experiments extend SNet146's recipe."""
    from lhrcnn.config import base_experiment_config, load_config
    snet49 = load_config(os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet49.coco"))
    snet146 = load_config(os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.coco"))
    assert snet49.backbone == "snet49" and snet146.backbone == "snet146"
    assert (snet49.image_short_size, snet49.test_rpn_post_nms_top_n) == (snet146.image_short_size, 200)
    (tmp_path / "user" / "mine").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing/config.py"):
        base_experiment_config(str(tmp_path / "user" / "mine" / "config.py"), "missing")


def test_main_job_default_is_a_synthetic_experiment():
    """`make demo` trains lhrcnn.config.MAIN_JOB_EXPERIMENT: it must load, read the synthetic set
    the main job writes, and be what scripts/run_main_job.py defaults to."""
    import subprocess
    import sys
    from lhrcnn.config import MAIN_JOB_EXPERIMENT
    config = load_config(os.path.join(ROOT, MAIN_JOB_EXPERIMENT))
    assert config.train_annotations == "data/synthetic/train/annotations.json"
    assert config.eval_annotations == "data/synthetic/val/annotations.json"
    assert config.class_names[0] == "background" and config.num_classes >= 7
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_main_job.py"), "--helpfull"],
                         capture_output=True, text=True).stdout  # absl exits 1 after --helpfull
    assert f"(default: '{MAIN_JOB_EXPERIMENT}')" in out
