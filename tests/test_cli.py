"""The command line (lhrcnn/cli.py, `python -m lhrcnn`, scripts/*.py): both forms of every
multi-word flag, --set parsing and its errors, one-line errors with their exit status (checked
before TensorFlow is imported), the flags reaching the trainer and the FLOPs counter, and `info`."""
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from lhrcnn import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments/lhrcnn/thundernet.snet146.synthetic")


def run_lhrcnn(*args, cwd=ROOT, code=None):
    """`python -m lhrcnn ARGS` (or `python -c CODE ARGS`) in a subprocess: (status, stdout, stderr)."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "lhrcnn"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run(command + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


# Runs cli.main on argv and prints whether TensorFlow got imported on the way.
WITHOUT_TF = ("import sys\nfrom lhrcnn import cli\nstatus = cli.main(sys.argv[1:])\n"
              "print('tensorflow imported:', 'tensorflow' in sys.modules)\nsys.exit(status)\n")


def assert_one_error_line(stderr, *fragments):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert all(str(f) in lines[0] for f in fragments), stderr


# ----------------------------------------------------------------------------- flag forms

def _example(flag):
    """(command-line words, the value they must parse to) for a flag."""
    if flag.kind == "integer":
        return ["7"], 7
    if flag.kind == "float":
        return ["0.25"], 0.25
    if flag.kind == "enum":
        return [flag.choices[-1]], flag.choices[-1]
    if flag.kind == "list":
        return ["a,b"], ["a", "b"]
    if flag.kind == "multi":
        return ["x=1"], ["x=1"]
    return ["some/path"], "some/path"


def _required_words(command, skip):
    words = []
    for flag in cli.COMMANDS[command].flags:
        if flag.required and flag.name != skip:
            words += [f"--{flag.name}", "r"]
    return words + (["image.png"] if cli.COMMANDS[command].positional else [])


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_multi_word_flag_has_both_forms(command):
    flags = [f for f in cli.COMMANDS[command].flags if "_" in f.name]
    if command in ("train", "test", "export", "predict", "demo", "benchmark"):
        assert flags, command
    for flag in flags:
        for form in (flag.name, flag.name.replace("_", "-")):
            if flag.kind == "boolean":
                on = cli.parse_args([command, f"--{form}", *_required_words(command, flag.name)])
                off = cli.parse_args([command, f"--no-{flag.name.replace('_', '-')}",
                                      *_required_words(command, flag.name)])
                assert (getattr(on, flag.name), getattr(off, flag.name)) == (True, False), form
                continue
            words, value = _example(flag)
            args = cli.parse_args([command, f"--{form}", *words, *_required_words(command, flag.name)])
            assert getattr(args, flag.name) == value, (command, form)


def test_booleans_and_defaults():
    base = ["export", "--experiment", "e", "--output", "o"]
    assert cli.parse_args(base).verify is True
    for negation in ("--noverify", "--no-verify", "--no_verify"):
        assert cli.parse_args(base + [negation]).verify is False
    assert cli.parse_args(base + ["--noverify", "--verify"]).verify is True
    args = cli.parse_args(["train", "--experiment", "e"])
    assert (args.checkpoint_every, args.log_every, args.eval_every, args.set) == (500, 10.0, 0, [])
    assert cli.parse_args(["benchmark"]).sections == list(cli.SECTIONS)
    assert cli.parse_args(["benchmark", "--sections", "ops"]).sections == ["ops"]  # replaces the default
    assert cli.parse_args(["predict", "--experiment", "e", "a.png", "b.jpg"]).images == ["a.png", "b.jpg"]


def test_units_are_in_the_help():
    helps = {f.name: f.help for f in cli.COMMANDS["train"].flags}
    assert helps["log_every"].startswith("Seconds")
    for name in ("checkpoint_every", "eval_every", "summary_every"):
        assert helps[name].startswith("Steps"), name


@pytest.mark.parametrize("argv, fragment", [
    (["train"], "--experiment"),
    (["train", "--experiment", "e", "--checkpoint-every", "x"], "'x' is not an integer"),
    (["train", "--experiment", "e", "--checkpoint-every", "0"], "smallest allowed value, 1"),
    (["train", "--experiment", "e", "--strategy", "fast"], "invalid choice: 'fast'"),
    (["train", "--experiment", "e", "--exp", "e"], "unrecognized arguments: --exp"),  # no abbreviations
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["predict", "--experiment", "e"], "IMAGE"),
])
def test_usage_errors_are_one_line_with_status_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    assert_one_error_line(capsys.readouterr().err, fragment, "--help")


# ----------------------------------------------------------------------------- --set

def test_set_values_are_literals_else_strings():
    overrides = cli.parse_overrides(["test_max_detections=50", "image_short_size=(320, 480)", "neck=None",
                                     "jit_compile=False", "backbone=snet49", "user= alice ", "experiment_name=a=b",
                                     "anchor_ratios=[0.5, 1]", "test_nms=0.3"])
    assert overrides == {"test_max_detections": 50, "image_short_size": (320, 480), "neck": None,
                         "jit_compile": False, "backbone": "snet49", "user": " alice ", "experiment_name": "a=b",
                         "anchor_ratios": [0.5, 1], "test_nms": 0.3}
    assert cli.parse_overrides([]) == {} and cli.parse_overrides(None) == {}


@pytest.mark.parametrize("item, fragments, kind", [
    ("tset_max_detections=5", ("'tset_max_detections'", "did you mean 'test_max_detections'"), cli.UserError),
    ("image_short_sise=5", ("did you mean 'image_short_size'",), cli.UserError),
    ("test_max_detections", ("FIELD=VALUE", "'test_max_detections'"), cli.UsageError),
    ("=5", ("FIELD=VALUE",), cli.UsageError),
])
def test_set_errors_name_the_field(item, fragments, kind):
    with pytest.raises(kind) as error:
        cli.parse_overrides(["test_nms=0.3", item])
    assert all(f in str(error.value) for f in fragments), str(error.value)


# ----------------------------------------------------------------------------- errors before TensorFlow

@pytest.mark.parametrize("argv, status, fragments", [
    (["train", "--experiment", "no/such/experiment"], 1, ["no/such/experiment"]),
    (["train", "--experiment", EXPERIMENT, "--set", "tset_max_detections=5"], 1, ["did you mean 'test_max_detections'"]),
    (["train", "--experiment", EXPERIMENT, "--set", "optimizer='sgd'"], 1, ["optimizer", "'sgd'"]),
    (["train", "--experiment", EXPERIMENT, "--init-checkpoint", "no/ckpt"], 1, ["--init-checkpoint", "no/ckpt"]),
    (["train", "--experiment", EXPERIMENT, "--eval-images", "x"], 2, ["--eval-images", "--eval-every"]),
    (["train", "--experiment", EXPERIMENT, "--eval-every", "5", "--eval-annotations", "no.json"], 1, ["no.json"]),
    (["test", "--experiment", EXPERIMENT, "--annotations", "no/ann.json"], 1, ["no/ann.json"]),
    (["test", "--experiment", EXPERIMENT, "--set", "bogus=1"], 1, ["'bogus'"]),
    (["predict", "--experiment", EXPERIMENT, "missing.png"], 1, ["image missing.png does not exist"]),
    (["predict", "--saved-model", "no/model", "a.png"], 1, ["no/model"]),
    (["predict", "a.png"], 2, ["--experiment", "--saved-model"]),
    (["predict", "--saved-model", "m", "--set", "test_nms=0.1", "a.png"], 2, ["--set applies to --experiment"]),
    (["demo", "--experiment", EXPERIMENT, "--checkpoint", "no/ckpt", "a.png"], 1, ["no/ckpt"]),
    (["export", "--experiment", EXPERIMENT, "--output", "o", "--set", "ops_backend='custom'"], 2, ["--ops"]),
    (["export", "--experiment", EXPERIMENT, "--output", "o", "--checkpoint", "no/ckpt"], 1, ["no/ckpt"]),
    (["flops", "--experiment", EXPERIMENT, "--input", "10x10"], 2, ["--input 10x10", ">= 32"]),
    (["flops", "--backbone", "snet49", "--set", "test_nms=0.1"], 2, ["--set applies to --experiment"]),
    (["flops"], 2, ["--backbone", "--experiment"]),
    (["convert", "--checkpoint", "c", "--experiment", "no/exp", "--output", "o"], 1, ["no/exp"]),
    (["benchmark", "--sections", "everything"], 2, ["everything", "known: ops"]),
])
def test_errors_before_tensorflow(argv, status, fragments, tmp_path):
    code, out, err = run_lhrcnn(*argv, cwd=tmp_path, code=WITHOUT_TF)
    assert code == status, err
    assert_one_error_line(err, *fragments)
    assert "tensorflow imported: False" in out


def test_error_after_tensorflow_is_one_line_too(tmp_path):
    """A checkpoint folder without checkpoints is found by resolve_checkpoint (TensorFlow)."""
    (tmp_path / "empty_dump").mkdir()
    code, _, err = run_lhrcnn("export", "--experiment", EXPERIMENT, "--output", tmp_path / "models",
                              "--checkpoint", tmp_path / "empty_dump", cwd=tmp_path)
    assert code == 1
    assert_one_error_line(err, f"no checkpoint in folder {tmp_path / 'empty_dump'}")
    assert not (tmp_path / "models").exists()


def test_scripts_give_the_same_errors(tmp_path):
    env = dict(os.environ)
    for script, args, status, fragment in (
            ("train.py", ["--experiment", "no/exp"], 1, "no/exp"),
            ("train.py", ["--experiment", EXPERIMENT, "--set", "tset_nms=1"], 1, "did you mean 'test_nms'"),
            ("train.py", ["--experiment", EXPERIMENT, "--bogus"], 2, "bogus"),
            ("flops.py", [], 2, "--backbone")):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == status, proc.stderr
        assert_one_error_line(proc.stderr, fragment)


def test_help():
    code, out, err = run_lhrcnn("--help")
    assert code == 0, err
    for name in cli.COMMANDS:
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name
    code, out, _ = run_lhrcnn("predict", "--help")
    assert code == 0 and "--saved-model" in out and "--score-threshold" in out and "IMAGE" in out
    code, _, err = run_lhrcnn()
    assert code == 2 and "COMMAND" in err
    code, out, _ = run_lhrcnn("--version")
    import lhrcnn
    assert code == 0 and out.strip() == f"lhrcnn {lhrcnn.__version__}"


# ----------------------------------------------------------------------------- flags reach the code

class _TrainerWithEval:
    """Stands in for lhrcnn.train.trainer.Trainer (records its arguments); knows the eval options."""
    calls = []

    def __init__(self, experiment_dir, *, output_dir=None, strategy=None, init_checkpoint=None, total_steps=None,
                 checkpoint_every=500, summary_every=20, log_every_seconds=10.0, eval_every=0,
                 eval_annotations=None, eval_images=None, eval_images_to_draw=4, **config_overrides):
        self.arguments = dict(experiment_dir=experiment_dir, output_dir=output_dir, total_steps=total_steps,
                              checkpoint_every=checkpoint_every, summary_every=summary_every,
                              log_every_seconds=log_every_seconds, eval_every=eval_every,
                              eval_annotations=eval_annotations, eval_images=eval_images,
                              eval_images_to_draw=eval_images_to_draw, **config_overrides)
        self.trained = False
        type(self).calls.append(self)

    def train(self):
        self.trained = True


class _TrainerWithoutEval(_TrainerWithEval):
    calls = []

    def __init__(self, experiment_dir, **kwargs):  # **kwargs: config overrides only
        super().__init__(experiment_dir, **kwargs)


def test_train_flags_reach_the_trainer(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("lhrcnn.train.trainer.Trainer", _TrainerWithEval)
    annotations = tmp_path / "val.json"
    annotations.write_text("{}")
    argv = ["train", "--experiment", EXPERIMENT, "--output", str(tmp_path / "out"), "--steps", "12",
            "--checkpoint_every", "4", "--log-every", "2.5", "--summary-every", "3", "--eval-every", "6",
            "--eval_annotations", str(annotations), "--eval-images", str(tmp_path), "--eval-images-to-draw", "0",
            "--set", "test_max_detections=7", "--set", "anchor_ratios=(1.0,)"]
    assert cli.run("train", cli.parse_args(argv)) == 0
    (trainer,) = _TrainerWithEval.calls
    assert trainer.trained
    assert trainer.arguments == dict(
        experiment_dir=EXPERIMENT, output_dir=str(tmp_path / "out"), total_steps=12, checkpoint_every=4,
        summary_every=3, log_every_seconds=2.5, eval_every=6, eval_annotations=str(annotations),
        eval_images=str(tmp_path), eval_images_to_draw=0, test_max_detections=7, anchor_ratios=(1.0,))

    # A trainer without the options: the defaults are not passed, a flag that needs one is an error.
    monkeypatch.setattr("lhrcnn.train.trainer.Trainer", _TrainerWithoutEval)
    assert cli.run("train", cli.parse_args(["train", "--experiment", EXPERIMENT, "--set", "test_nms=0.4"])) == 0
    (trainer,) = _TrainerWithoutEval.calls
    assert trainer.arguments["test_nms"] == 0.4 and trainer.arguments["eval_every"] == 0
    capsys.readouterr()
    assert cli.run("train", cli.parse_args(["train", "--experiment", EXPERIMENT, "--eval-every", "5"])) == 2
    assert_one_error_line(capsys.readouterr().err, "--eval-every", "eval_every")
    assert len(_TrainerWithoutEval.calls) == 1


def test_flops_overrides_reach_the_counter(monkeypatch, capsys):
    calls = []

    def detector_complexity(experiment, height, width, **overrides):
        calls.append((experiment, height, width, overrides))
        return {"name": "x", "rois": 30, "input": f"{height}x{width}", "macs": 2e6, "parameters": 1e6,
                "trainable_parameters": 1e6, "by_op": {"Conv2D": 2e6}, "unknown": []}

    monkeypatch.setattr("lhrcnn.flops.detector_complexity", detector_complexity)
    argv = ["flops", "--experiment", EXPERIMENT, "--input", "64x96", "--set", "test_rpn_post_nms_top_n=30",
            "--set", "backbone_options={'bn_momentum': 0.5}"]
    assert cli.run("flops", cli.parse_args(argv)) == 0
    assert calls == [(EXPERIMENT, 64, 96, {"test_rpn_post_nms_top_n": 30, "backbone_options": {"bn_momentum": 0.5}})]
    assert "2.0 M multiply-adds" in capsys.readouterr().out


# ----------------------------------------------------------------------------- info

def test_info(tmp_path):
    for folder, files in (("alice/good", ("config.py", "network_desp.py")), ("alice/base", ("config.py",)),
                          ("bob/deep/nested", ("config.py", "network_desp.py"))):
        (tmp_path / "experiments" / folder).mkdir(parents=True)
        for name in files:
            (tmp_path / "experiments" / folder / name).write_text("")
    code, out, err = run_lhrcnn("info", cwd=tmp_path)
    assert code == 0, err
    assert err.strip() == "", err  # TensorFlow's start-up logs are silenced
    lines = out.splitlines()
    import lhrcnn
    assert f"lhrcnn      {lhrcnn.__version__}" in out
    assert f"python      {platform.python_version()} " in out
    assert f"numpy       {np.__version__}" in lines
    assert any(line.split()[:2] == ["tensorflow", importlib.metadata.version("tensorflow")] for line in lines)
    experiments = lines[lines.index(next(l for l in lines if l.startswith("experiments "))) + 1:]
    assert experiments == ["  experiments/alice/good", "  experiments/bob/deep/nested"]
    assert lines[-3] == f"experiments 2 in {tmp_path / 'experiments'}"

    from lhrcnn import ops
    record = os.path.join(ROOT, "lhrcnn", "_lhrcnn_ops.json")  # written by the op build
    built = {}
    if os.path.isfile(record):
        with open(record) as f:
            built = json.load(f)
    else:
        assert "ops build   no build record (lhrcnn/_lhrcnn_ops.json)" in lines
    if ops.custom_ops_available():
        assert f"custom ops  loaded ({ops.library_path()})" in lines
        assert any(l.startswith("  CPU kernels  8 of 8 ops") for l in lines), out
    else:
        assert f"custom ops  not loaded: {ops.custom_ops_load_error()}" in out
    if built.get("cuda"):  # every op has a GPU kernel but the depthwise filter gradient (TensorFlow's there)
        assert any(l.startswith("  GPU kernels  7 of 8 ops") and "LhrcnnDepthwiseFilterGrad" not in l
                   for l in lines), out
        assert f"archs {', '.join(built['archs'])};" in out
        assert f"cuda runtime {built['cuda_runtime']}" in lines


def test_info_lists_the_repository_experiments():
    code, out, err = run_lhrcnn("info")
    assert code == 0, err
    expected = sorted(os.path.relpath(folder, ROOT) for folder, _, files in os.walk(os.path.join(ROOT, "experiments"))
                      if "config.py" in files and "network_desp.py" in files)
    assert "  experiments/lhrcnn/thundernet.snet146.synthetic" in out.splitlines()
    assert [l.strip() for l in out.splitlines() if l.startswith("  experiments/")] == expected


def test_import_lhrcnn_is_cheap():
    code = ("import sys\nimport lhrcnn\nassert 'tensorflow' not in sys.modules\n"
            "assert {'build_detector', 'load_detector', 'Predictor'} <= set(dir(lhrcnn))\n"
            "lhrcnn.Predictor\nprint('after Predictor:', 'tensorflow' in sys.modules)\n"
            "import lhrcnn.detector\nassert lhrcnn.build_detector is lhrcnn.detector.build_detector\n"
            "print('after build_detector:', 'tensorflow' in sys.modules)\n")
    status, out, err = run_lhrcnn(code=code)
    assert status == 0, err
    assert out.split("\n")[:2] == ["after Predictor: False", "after build_detector: True"]


def test_info_reads_the_build_record_without_build_info(monkeypatch, capsys):
    """Without lhrcnn.ops.build_info, `info` reads the same facts from the build record itself."""
    from lhrcnn import ops
    args = cli.parse_args(["info"])
    assert cli.run("info", args) == 0
    with_build_info = capsys.readouterr().out
    monkeypatch.delattr(ops, "build_info", raising=False)
    assert cli.run("info", args) == 0
    assert capsys.readouterr().out == with_build_info


def test_info_reports_a_failed_build(monkeypatch, capsys):
    from lhrcnn import ops
    monkeypatch.setattr(ops, "build_info", lambda: {
        "loaded": False, "load_error": "/x/_lhrcnn_ops.so does not exist", "library": "/x/_lhrcnn_ops.so",
        "record": "/x/_lhrcnn_ops.json", "built": False, "build_error": "nvcc: no such file", "cuda": False,
        "cuda_archs": [], "backend": "tf"}, raising=False)
    assert cli.run("info", cli.parse_args(["info"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "custom ops  not loaded: /x/_lhrcnn_ops.so does not exist (the ops' pure-TF twins are used)" in lines
    assert "ops build   failed: nvcc: no such file" in lines
    assert not any("kernels" in line for line in lines)
    assert any(line.startswith("ops backend tf ") for line in lines)
