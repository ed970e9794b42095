"""The README's recipes as written: every `lhrcnn ...` line of the README and docs/ parses against the
command line, and the recipes that need nothing from outside (detect, own data, evaluate, export,
the Python snippet) run in a scratch working directory, in the README's order of dependence.

What the scratch directory holds in place of a user's: experiments/lhrcnn and experiments/templates
(links to the repository's), a small COCO dataset at data/mine/ (the synthetic generator's images
and json, named as the recipe names them), a checkpoint of the default experiment with fresh weights
where `make demo` would leave a trained one, and the images the recipes name. Test-only changes to
the command lines: `--steps 2` on `train` (the recipe trains the full schedule) and the export's
absolute /models/ folder moved under the scratch directory. Lines that need what this machine does
not have (a TF1 checkpoint, a cluster, a model server) are only parsed; their machinery has tests of
its own."""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from lhrcnn import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = "experiments/lhrcnn/thundernet.snet146.synthetic"


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _blocks(text, languages):
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lang in languages]


def command_lines(text):
    """The shell lines of `text`'s bash blocks (continuations joined), comments dropped."""
    lines = []
    for body in _blocks(text, ("bash", "sh")):
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.strip())
    return lines


def lhrcnn_argv(line):
    """argv after `lhrcnn` of a README line; optional parts in [brackets] left out."""
    return shlex.split(re.sub(r"\[[^\]]*\]", "", line), comments=True)[1:]


def _documented_lines():
    texts = {"README.md": _readme()}
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(path) as f:
            texts[os.path.relpath(path, ROOT)] = f.read()
    return [(name, line) for name, text in texts.items() for line in command_lines(text) if line.startswith("lhrcnn ")]


def test_the_readme_has_recipes():
    lines = [line for name, line in _documented_lines() if name == "README.md"]
    commands = {lhrcnn_argv(line)[0] for line in lines}
    assert {"predict", "new-experiment", "train", "test", "convert", "export"} <= commands, commands
    assert len(_blocks(_readme(), ("python",))) == 2  # the Predictor and the edge runtime


@pytest.mark.parametrize("where,line", _documented_lines(), ids=lambda v: v if len(v) < 40 else v[:60])
def test_every_documented_command_line_parses(where, line):
    try:
        args = cli.build_parser().parse_args(lhrcnn_argv(line))
    except SystemExit as e:
        pytest.fail(f"{where}: `{line}` does not parse (exit {e.code})")
    assert args.command in cli.COMMANDS


# ----------------------------------------------------------------------------- running the recipes

# Lines that need what is not here: the original's TF1 checkpoint and the R-101 experiment trained on
# COCO, a TF_CONFIG cluster, a model server and its client, TensorBoard's server.
def _runs_here(line):
    if not line.startswith("lhrcnn "):
        return False
    argv = lhrcnn_argv(line)
    return argv[0] != "convert" and not any("ori_res101" in a for a in argv)


def _run(argv, cwd, timeout=900):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("LHRCNN_OPS", None)
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _workspace(tmp_path):
    from lhrcnn.data.synthetic import write_dataset
    work = tmp_path / "work"
    (work / "experiments").mkdir(parents=True)
    for name in ("lhrcnn", "templates"):
        os.symlink(os.path.join(ROOT, "experiments", name), work / "experiments" / name)
    for split, count, seed in (("train", 6, 11), ("val", 3, 12)):
        scratch = tmp_path / f"generated_{split}"
        write_dataset(str(scratch), count, seed, workers=1)
        os.makedirs(work / "data" / "mine", exist_ok=True)
        shutil.move(str(scratch / "annotations.json"), str(work / "data" / "mine" / f"{split}.json"))
        shutil.move(str(scratch / "images"), str(work / "data" / "mine" / split))
    write_dataset(str(work / "data" / "synthetic" / "train"), 4, 13, workers=1)  # int8 calibration images
    write_dataset(str(work / "data" / "synthetic" / "val"), 2, 14, workers=1)  # lhrcnn test --model's eval set
    val = sorted(glob.glob(str(work / "data" / "mine" / "val" / "*.jpg")))
    shutil.copy(val[0], work / "image.jpg")
    shutil.copy(val[1], work / "a.jpg")
    from PIL import Image
    Image.open(val[2]).save(work / "b.png")
    # the default experiment's checkpoint where `make demo` puts it (fresh weights)
    _run(["-c", "import sys, tensorflow as tf, lhrcnn\n"
          f"detector = lhrcnn.build_detector({DEFAULT!r})\n"
          "tf.train.Checkpoint(model=detector).write('output/lhrcnn/thundernet.snet146.synthetic/model_dump/ckpt-1')\n"],
         cwd=str(work))
    return work


@pytest.mark.slow(seconds=180)
def test_the_readme_recipes_run_as_written(tmp_path):
    work = _workspace(tmp_path)
    models = tmp_path / "models"
    lines = [line for line in command_lines(_readme()) if _runs_here(line)]
    # export first: the predict recipe reads the export `make demo` leaves
    lines.sort(key=lambda line: lhrcnn_argv(line)[0] != "export")
    ran = []
    for line in lines:
        argv = [a.replace("/models/", f"{models}/") for a in lhrcnn_argv(line)]
        if argv[0] == "train":  # 2 steps, and precise BN over 2 batches instead of the template's 50
            argv += ["--steps", "2", "--set", "precise_bn_batches=2"]
        _run(["-m", "lhrcnn", *argv], cwd=str(work))
        ran.append(argv[0])
        if argv[0] == "export" and "--format" not in argv:  # the SavedModel the predict recipe reads
            export = work / "output/lhrcnn/thundernet.snet146.synthetic/export"
            export.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(models / "thundernet", export)
    assert sorted(set(ran)) == ["export", "info", "new-experiment", "predict", "test", "train"], ran
    assert json.loads((work / "output/edge/thundernet_int8/export_info.json").read_text())["int8_ops"]
    edge_metrics = glob.glob(str(work / "output/lhrcnn/thundernet.snet146.synthetic/eval_dump/thundernet_int8_tflite/metrics.json"))
    assert edge_metrics and "AP" in json.loads(open(edge_metrics[0]).read())

    for name in ("a", "b"):
        report = json.loads((work / "out" / f"{name}_detections.json").read_text())
        assert "detections" in report and (work / "out" / f"{name}_detections.png").stat().st_size > 0
    mine = work / "output/me/my_detector"
    assert glob.glob(str(mine / "model_dump" / "*.index"))
    metrics = json.loads((mine / "eval_dump" / "metrics.json").read_text())
    assert {"AP", "AP50", "AR100"} <= set(metrics), metrics
    results = json.loads((mine / "eval_dump" / "results.json").read_text())
    categories = {c["id"] for c in json.loads((work / "data/mine/val.json").read_text())["categories"]}
    assert {r["category_id"] for r in results} <= categories
    assert glob.glob(str(mine / "tensorboard" / "**" / "events.*"), recursive=True)

    predictor_snippet, edge_snippet = _blocks(_readme(), ("python",))
    out = _run(["-c", predictor_snippet + "\nprint('SNIPPET', len(detections), drawn.shape, served.class_names)\n"],
               cwd=str(work)).stdout
    assert "SNIPPET" in out and "circle" in out, out
    out = _run(["-c", edge_snippet + "\nimport sys\nassert 'tensorflow' not in sys.modules\n"
                "print('EDGE', boxes.shape, scores.shape, len(classes), len(category_ids))\n"], cwd=str(work)).stdout
    assert "EDGE" in out, out
