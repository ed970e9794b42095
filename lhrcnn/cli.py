"""The `lhrcnn` command line (also `python -m lhrcnn`):

  lhrcnn train      --experiment DIR [--steps N] [--set FIELD=VALUE ...]   trains (resumes) an experiment
  lhrcnn test       --experiment DIR [--checkpoint PATH]                   COCO evaluation
  lhrcnn predict    --experiment DIR | --saved-model DIR  IMAGE ...        detections, drawn + JSON
  lhrcnn demo       --experiment DIR --checkpoint PATH IMAGE ...           predict with the demo's defaults
  lhrcnn export     --experiment DIR --output DIR                          SavedModel for TF Serving
  lhrcnn convert    --checkpoint TF1 --experiment DIR --output DIR         TF1 checkpoint -> TF2
  lhrcnn flops      --backbone NAME | --experiment DIR                     multiply-adds and parameters
  lhrcnn benchmark  [--sections ...]                                       benchmark tables (a checkout)
  lhrcnn new-experiment DEST --from DIR [--set FIELD=VALUE ...]             a new experiment folder
  lhrcnn info                                                              versions, compiled ops, experiments

`lhrcnn COMMAND --help` lists a command's flags. Every multi-word flag has a --dash-form and an
--underscore_form; booleans are negated with --no-NAME (or --noNAME). --set FIELD=VALUE (train,
test, predict, export, flops, new-experiment; repeatable) overrides a config field: VALUE is read as a Python
literal (ast.literal_eval), else taken as a string; an unknown field is an error naming the closest
one.

Each command's flags are declared once, in COMMANDS. The command line parses them with argparse;
scripts/*.py define the same flags as absl flags (define_absl_flags) and run the same code
(absl_main). A failure the user can fix is one line on stderr, `error: ...`, naming what is wrong
and how to fix it, with exit status 2 for a usage mistake (a flag) and 1 for any other (a missing
file, a config that does not load); such checks run before TensorFlow is imported where they can.
TensorFlow's C++ start-up logs are silenced (TF_CPP_MIN_LOG_LEVEL=3 when the environment does not
set a level); --verbose shows them, and every library's INFO messages.
"""
import argparse
import ast
import dataclasses
import io
import json
import logging
import os
import platform
import sys

from lhrcnn.errors import MissingPathError, UserError


class UsageError(Exception):
    """A mistake in the command line (a flag's value or a missing flag): exit status 2."""


# ----------------------------------------------------------------------------- flags


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag. name: the underscore form (the attribute name); kind: string, integer, float,
    boolean, enum (choices), multi (repeatable string) or list (comma-separated strings)."""

    name: str
    kind: str
    default: object = None
    help: str = ""
    required: bool = False
    choices: tuple = ()
    lower_bound: object = None
    metavar: str = None


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    flags: tuple
    run: object
    positional: tuple = None  # (name, metavar, help[, nargs]): nargs "+" (one or more) unless given


VERBOSE = Flag("verbose", "boolean", False, "Show TensorFlow's start-up logs and INFO messages.")
SET = Flag("set", "multi", None, "Override a config field (repeatable): VALUE is a Python literal (e.g. 50, "
           "(320, 512), None, False), else a string.", metavar="FIELD=VALUE")


def parse_overrides(items):
    """{field: value} of --set FIELD=VALUE items: VALUE through ast.literal_eval, else the string
    itself. UsageError (status 2) for an item without `=`; UserError (status 1, as for any other
    config mistake) for a field that Config does not define, naming the closest one."""
    from lhrcnn.config import Config
    known = Config.known_fields()
    overrides = {}
    for item in items or ():
        field, sep, text = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise UsageError(f"--set takes FIELD=VALUE, got {item!r} (e.g. --set test_max_detections=50)")
        if field not in known:
            raise UserError(Config._unknown_message(field, "--set"))
        try:
            overrides[field] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            overrides[field] = text
    return overrides


def _load_config(experiment, overrides=None):
    """The experiment's Config (no TensorFlow): UserError naming the folder or the config's problem."""
    from lhrcnn.config import load_config
    from lhrcnn.paths import require_dir, require_file
    require_dir(experiment, "experiment folder")
    require_file(os.path.join(experiment, "config.py"), "experiment config")
    try:
        return load_config(experiment, **(overrides or {}))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{experiment}: {e}") from None


def _require_checkpoint(path, flag):
    """A quick look (no TensorFlow) that the checkpoint `path` (prefix, V1 file or folder) exists;
    paths of other filesystems (gs://...) are left to resolve_checkpoint."""
    if path is None or "://" in path or os.path.exists(path) or os.path.exists(path + ".index"):
        return path
    raise MissingPathError(f"{flag}: checkpoint {path} does not exist (expected {path}.index, a V1 checkpoint "
                           f"file, or a folder of checkpoints)")


def _atomic_write(path, data):
    """Writes bytes to `path` through a temporary file in its folder and os.replace."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------- train


class _QuietCollectiveTracing(logging.Filter):
    """Drops TF's one-line-per-collective INFO messages logged while the step is traced."""

    def filter(self, record):
        return "Collective all_reduce tensors" not in record.getMessage()


def _accepted(callable_, name):
    """True when `callable_` names the keyword argument `name` (not only through **kwargs)."""
    import inspect
    try:
        parameter = inspect.signature(callable_).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def run_train(args):
    overrides = parse_overrides(args.set)
    _load_config(args.experiment, overrides)
    _require_checkpoint(args.init_checkpoint, "--init-checkpoint")
    for flag, value in (("--eval-annotations", args.eval_annotations), ("--eval-images", args.eval_images),
                        ("--eval-images-to-draw", args.eval_images_to_draw)):
        if value is not None and args.eval_every == 0:
            raise UsageError(f"{flag} is used by the periodic evaluation only: add --eval-every N (steps)")
    if args.eval_annotations is not None and not os.path.isfile(args.eval_annotations):
        raise MissingPathError(f"--eval-annotations: annotation file {args.eval_annotations} does not exist")
    if args.eval_images is not None and not os.path.isdir(args.eval_images):
        raise MissingPathError(f"--eval-images: image folder {args.eval_images} does not exist or is not a folder")

    logging.getLogger("tensorflow").addFilter(_QuietCollectiveTracing())
    from lhrcnn.convert import tf1
    from lhrcnn.paths import resolve_checkpoint
    from lhrcnn.train import trainer as trainer_module
    from lhrcnn.train.distribute import make_strategy
    init, tf1_init = args.init_checkpoint, None
    if init:
        try:
            if tf1.is_tf1_checkpoint(init):  # name-based: mapped through the TF1 tables, not restored by object
                tf1_init, init = resolve_checkpoint(init), None
        except FileNotFoundError as e:
            raise MissingPathError(f"--init-checkpoint: {e}") from None
    try:
        strategy = make_strategy(args.strategy, num_gpus=args.num_gpus, cpu_replicas=args.cpu_replicas,
                                 communication=args.communication)
    except ValueError as e:
        raise UserError(f"--strategy {args.strategy}: {e}") from None
    trainer_class = trainer_module.Trainer
    options = {}
    for name, flag, value, unset in (("summary_every", "--summary-every", args.summary_every, None),
                                     ("eval_every", "--eval-every", args.eval_every, 0),
                                     ("eval_annotations", "--eval-annotations", args.eval_annotations, None),
                                     ("eval_images", "--eval-images", args.eval_images, None),
                                     ("eval_images_to_draw", "--eval-images-to-draw", args.eval_images_to_draw,
                                      None)):
        if value == unset:
            continue
        if not _accepted(trainer_class, name):
            raise UsageError(f"{flag}: this lhrcnn's trainer has no {name} option; leave the flag out")
        options[name] = value
    try:
        trainer = trainer_class(args.experiment, output_dir=args.output, init_checkpoint=init,
                                total_steps=args.steps, checkpoint_every=args.checkpoint_every,
                                log_every_seconds=args.log_every, strategy=strategy, **options, **overrides)
    except (FileNotFoundError, ValueError) as e:  # the eval set, a config value
        raise UserError(str(e)) from None
    if tf1_init:
        if trainer.checkpoints.latest():
            print(f"the run resumes from {trainer.checkpoints.latest()}; "
                  f"--init-checkpoint {tf1_init} is not used", flush=True)
        else:
            try:
                report = tf1.load_tf1_checkpoint(trainer.detector, tf1_init)
            except ValueError as e:
                raise UserError(f"--init-checkpoint: {e}") from None
            print(report.summary(), flush=True)
            trainer.initialized_externally = True
    try:
        trainer.train()
    except RuntimeError as e:  # a lost worker: the message says how to resume
        raise UserError(str(e)) from None


# ----------------------------------------------------------------------------- test


def run_test(args):
    import dataclasses as dc

    from lhrcnn.paths import config_path, experiment_output_dir, require_dir, require_file, resolve_checkpoint
    overrides = parse_overrides(args.set)
    experiment = args.experiment
    if args.model:
        if args.checkpoint:
            raise UsageError("--checkpoint and --model: give one (an edge export holds its weights)")
        if not experiment and not (args.annotations and args.images and args.output):
            raise UsageError("--model without --experiment needs --annotations, --images and --output")
        model_path = _require_edge_model(args.model)
    elif not experiment:
        raise UsageError("--experiment is required (or --model with --annotations, --images and --output)")
    config = _load_config(experiment, overrides) if experiment else None
    out_root = experiment_output_dir(config, experiment) if experiment else None
    annotations = require_file(args.annotations or config_path(config.eval_annotations), "annotation file")
    images = require_dir(args.images or config_path(config.eval_images), "image folder")
    if args.model:
        return _test_edge_model(args, model_path, annotations, images,
                                args.output or os.path.join(out_root, "eval_dump", _edge_eval_name(model_path)))
    _require_checkpoint(args.checkpoint, "--checkpoint")
    output = args.output or os.path.join(out_root, "eval_dump")
    checkpoint = resolve_checkpoint(args.checkpoint or os.path.join(out_root, "model_dump"))

    from lhrcnn.data.coco import load_coco
    from lhrcnn.data.pipeline import make_dataset
    from lhrcnn.detector import load_detector
    from lhrcnn.evaluation import coco_eval

    try:
        dataset = load_coco(annotations, images, class_names=config.class_names)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"cannot read the eval set {annotations}: {e}") from None
    if args.max_images:  # the first N records (image-id order): the pipeline reads only those
        dataset = dc.replace(dataset, records=dataset.records[:args.max_images])
    num_images = len(dataset.records)
    if not num_images:
        raise UserError(f"no images to evaluate in {annotations} (with images in {images})")
    tf_dataset = make_dataset(dataset, config, training=False, batch_size=args.batch_size)
    print(f"evaluating {checkpoint} on {num_images} images of {annotations}")
    try:
        detector = load_detector(experiment, checkpoint=checkpoint, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    results, image_ids, speed = coco_eval.run_inference(detector, tf_dataset, dataset.category_ids,
                                                        num_images=num_images)
    if len(image_ids) < num_images:
        print(f"warning: {num_images - len(image_ids)} of {num_images} images could not be read (named in the "
              f"warnings above) and are not evaluated")
    results_path = coco_eval.write_json(os.path.join(output, "results.json"), results)  # before scoring
    stats = _score(coco_eval, dataset.annotation_file, results, image_ids, results_path)
    metrics = dict(stats)
    metrics.update(images=len(image_ids), images_per_second=speed["images_per_second"], seconds=speed["seconds"],
                   checkpoint=os.path.abspath(checkpoint), annotations=os.path.abspath(annotations),
                   experiment=os.path.abspath(experiment))
    metrics_path = coco_eval.write_json(os.path.join(output, "metrics.json"), metrics, indent=1)
    print(stats.summary)
    print(f"{len(image_ids)} images, {len(results)} detections, {speed['images_per_second']:.2f} images/s")
    print(f"wrote {results_path}\nwrote {metrics_path}")


def _score(coco_eval, annotation_file, results, image_ids, results_path):
    """COCOeval of written results; a failure is a UserError that says the detections are kept."""
    try:
        return coco_eval.evaluate(annotation_file, results, image_ids=image_ids, verbose=False)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"scoring against {annotation_file} failed ({type(e).__name__}: {e}); the detections are "
                        f"kept in {results_path}") from None


def _edge_eval_name(model_path):
    """eval_dump/<name> of an edge model: its folder's name and format (thundernet_int8_tflite)."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(model_path)))
    return f"{folder}_{os.path.splitext(model_path)[1].lstrip('.')}"


def _test_edge_model(args, model_path, annotations, images, output):
    from lhrcnn.data.coco import load_coco
    from lhrcnn.evaluation import coco_eval
    from lhrcnn.export.edge_runtime import EdgeModel
    from lhrcnn.predictor import read_image
    try:
        model = EdgeModel(model_path)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UserError(f"--model: {e}") from None
    try:
        dataset = load_coco(annotations, images, class_names=model.class_names)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"cannot read the eval set {annotations}: {e}") from None
    records = dataset.records[:args.max_images] if args.max_images else dataset.records
    if not records:
        raise UserError(f"no images to evaluate in {annotations} (with images in {images})")
    print(f"evaluating {model_path} ({model.format}, {model.info['quantize']}, {model.provider}) on {len(records)} "
          f"images of {annotations}")
    results, image_ids, speed = coco_eval.run_edge_inference(model, records, dataset.category_ids, read_image)
    results_path = coco_eval.write_json(os.path.join(output, "results.json"), results)  # before scoring
    stats = _score(coco_eval, dataset.annotation_file, results, image_ids, results_path)
    metrics = dict(stats)
    metrics.update(images=len(image_ids), images_per_second=speed["images_per_second"], seconds=speed["seconds"],
                   model=os.path.abspath(model_path), format=model.format, quantize=model.info["quantize"],
                   runtime=model.provider, annotations=os.path.abspath(annotations))
    metrics_path = coco_eval.write_json(os.path.join(output, "metrics.json"), metrics, indent=1)
    print(stats.summary)
    print(f"{len(image_ids)} images, {len(results)} detections, {speed['images_per_second']:.2f} images/s")
    print(f"wrote {results_path}\nwrote {metrics_path}")


# ----------------------------------------------------------------------------- predict / demo


def _predict(args, *, overrides, default_output, score_threshold):
    """Detections of every image of args.images: printed, drawn into <output>/<name>_detections.png
    and written to <output>/<name>_detections.json. Every image is read before the detector is
    built, and nothing is written when one cannot be read."""
    from lhrcnn.paths import require_file
    for path in args.images:  # before anything slow
        require_file(path, "image")

    from lhrcnn import predictor as predictor_lib
    from lhrcnn.visualize import output_names
    images = []
    for path in args.images:
        try:
            images.append(predictor_lib.read_image(path))
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        if getattr(args, "model", None):
            predictor = predictor_lib.Predictor.from_edge_model(args.model, score_threshold=score_threshold)
            source = {"model": os.path.abspath(predictor.edge_model.path)}
        elif args.saved_model:
            predictor = predictor_lib.Predictor.from_saved_model(args.saved_model, score_threshold=score_threshold)
            source = {"saved_model": os.path.abspath(predictor.saved_model)}
        else:
            predictor = predictor_lib.Predictor(args.experiment, args.checkpoint, score_threshold=score_threshold,
                                                **overrides)
            source = {"checkpoint": os.path.abspath(predictor.checkpoint)}
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    output = args.output or default_output
    os.makedirs(output, exist_ok=True)
    from PIL import Image
    for path, name, image in zip(args.images, output_names(args.images), images):
        detections = predictor(image)
        png = os.path.join(output, f"{name}_detections.png")
        buffer = io.BytesIO()
        Image.fromarray(predictor.draw(image, detections)).save(buffer, format="PNG")
        _atomic_write(png, buffer.getvalue())
        report = {"image": os.path.abspath(path), "height": int(image.shape[0]), "width": int(image.shape[1]),
                  **source, "score_threshold": predictor.score_threshold, "detections": detections.to_list()}
        _atomic_write(os.path.join(output, f"{name}_detections.json"), json.dumps(report, indent=1).encode())
        print(f"{path}: {len(detections)} detections (score > {predictor.score_threshold:g}) -> {png}")
        for det in report["detections"]:
            x1, y1, x2, y2 = det["box"]
            print(f"  {det['class']:<16} {det['score']:.3f}  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")


def run_predict(args):
    if sum(bool(v) for v in (args.experiment, args.saved_model, args.model)) != 1:
        raise UsageError("give exactly one of --experiment DIR (with --checkpoint), --saved-model DIR or --model FILE")
    if args.saved_model or args.model:
        for flag, value in (("--checkpoint", args.checkpoint), ("--set", args.set)):
            if value:
                raise UsageError(f"{flag} applies to --experiment only (an export holds its weights and config)")
    if args.model:
        _require_edge_model(args.model)
        return _predict(args, overrides={}, default_output=os.path.join("output", "predict"),
                        score_threshold=args.score_threshold)
    if args.saved_model:
        from lhrcnn.predictor import saved_model_version
        saved_model_version(args.saved_model)  # MissingPathError naming it, before TensorFlow
        return _predict(args, overrides={}, default_output=os.path.join("output", "predict"),
                        score_threshold=args.score_threshold)
    from lhrcnn.paths import experiment_output_dir
    overrides = parse_overrides(args.set)
    config = _load_config(args.experiment, overrides)
    _require_checkpoint(args.checkpoint, "--checkpoint")
    return _predict(args, overrides=overrides, score_threshold=args.score_threshold,
                    default_output=os.path.join(experiment_output_dir(config, args.experiment), "predict"))


def _require_edge_model(path):
    """UserError naming an edge model file that is missing or of another kind (no TensorFlow)."""
    from lhrcnn.export import edge_runtime
    try:
        path = edge_runtime.model_file(path)
    except FileNotFoundError as e:
        raise MissingPathError(f"--model: {e}") from None
    if not path.endswith((".tflite", ".onnx")):
        raise UsageError(f"--model {path}: an edge model is a .tflite or .onnx file (--saved-model takes SavedModels)")
    if not os.path.isfile(path):
        raise MissingPathError(f"--model: {path} does not exist")
    try:
        edge_runtime.read_info(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--model: {e}") from None
    return path


def run_demo(args):
    from lhrcnn.paths import experiment_output_dir
    config = _load_config(args.experiment)
    _require_checkpoint(args.checkpoint, "--checkpoint")
    args = argparse.Namespace(**vars(args), saved_model=None, model=None)
    return _predict(args, overrides={}, score_threshold=args.score_threshold,
                    default_output=os.path.join(experiment_output_dir(config, args.experiment), "demo"))


# ----------------------------------------------------------------------------- export


def run_export(args):
    from lhrcnn.paths import experiment_output_dir, resolve_checkpoint
    overrides = parse_overrides(args.set)
    for field, flag in (("ops_backend", "--ops"), ("test_max_detections", "--max-detections"),
                        ("test_score_threshold", "--score-threshold"), ("max_image_pixels", "--max-image-pixels")):
        if field in overrides:
            raise UsageError(f"--set {field}: the export sets it from {flag}; use {flag}")
    overrides["ops_backend"] = args.ops
    if args.max_detections is not None:
        overrides["test_max_detections"] = args.max_detections
    if args.score_threshold is not None:
        overrides["test_score_threshold"] = args.score_threshold
    if args.max_image_pixels is not None:
        overrides["max_image_pixels"] = args.max_image_pixels
    experiment = args.experiment
    edge = args.format != "savedmodel"
    if edge:
        from lhrcnn.export import edge as edge_lib
        if args.ops != "tf":
            raise UsageError(f"--format {args.format} holds stock ops only: leave out --ops custom")
        if args.version is not None:
            raise UsageError(f"--version is for SavedModels; --format {args.format} writes the --output folder")
        if args.format == "onnx" and args.quantize != "none":
            raise UsageError("--format onnx is float32: --quantize applies to --format tflite")
        try:
            input_size = edge_lib.parse_input_size(args.input_size) if args.input_size else None
        except ValueError as e:
            raise UsageError(f"--input-size: {e}") from None
    elif args.quantize != "none" or args.input_size or not args.resize:
        raise UsageError("--quantize, --input-size and --no-resize apply to --format tflite / onnx")
    config = _load_config(experiment, overrides)
    output = os.path.abspath(args.output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output} exists and is not a folder")
    if edge and os.path.isdir(output) and os.listdir(output):
        raise UserError(f"--output {output} is not empty; an edge export writes a folder of its own")
    if args.annotations is not None and not os.path.isfile(args.annotations):
        raise MissingPathError(f"annotation file {args.annotations} does not exist")
    _require_checkpoint(args.checkpoint, "--checkpoint")
    from lhrcnn.export.saved_model import next_version
    version = None if edge else args.version or next_version(output)
    if not edge and os.path.exists(os.path.join(output, str(version))):
        raise UserError(f"{os.path.join(output, str(version))} exists already; refusing to overwrite a version "
                        "(pick another --version, or leave it out for the next one)")
    checkpoint = resolve_checkpoint(args.checkpoint or os.path.join(experiment_output_dir(config, experiment),
                                                                    "model_dump"))
    from lhrcnn.export import categories
    from lhrcnn.paths import config_path
    ids_from = args.annotations
    eval_json = config_path(config.eval_annotations) if config.eval_annotations else None
    if ids_from is None and config.class_names_source and not (eval_json and os.path.isfile(eval_json)):
        ids_from = config.class_names_source  # class_names = "from_annotations": that json's ids
    try:
        category_ids, source = categories.resolve_category_ids(config, ids_from)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.ops == "custom":
        from lhrcnn import ops
        if not ops.custom_ops_available():
            raise UserError(f"--ops custom needs the compiled ops: {ops.custom_ops_load_error()}")
    if edge:
        return _export_edge(args, experiment, config, overrides, checkpoint, output, category_ids, source,
                            input_size)

    from lhrcnn.detector import load_detector
    from lhrcnn.export.saved_model import export_saved_model

    print(f"exporting {checkpoint} ({args.ops} ops) to {os.path.join(output, str(version))}")
    try:
        detector = load_detector(experiment, checkpoint=checkpoint, **overrides)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    try:
        path = export_saved_model(
            detector, output, category_ids=category_ids, version=version, verify=args.verify,
            info={"experiment": os.path.abspath(experiment), "checkpoint": os.path.abspath(checkpoint),
                  "category_ids_from": source})
    except (FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    except Exception as e:
        _raise_if_storage_failure(e, output)
        raise
    print(f"wrote {path}\n  signatures: serving_default (images uint8 [N, H, W, 3]), serve_bytes (image_bytes "
          f"string [N])\n  category ids from {source}")
    name = os.path.basename(output)
    if args.ops == "custom":
        print("serve it with a tensorflow_model_server built with //ops:lhrcnn_ops (docs/serving.md, \"Linking the "
              "ops into tensorflow_model_server\"); a stock server cannot load it")
    else:
        print(f"serve it: docker run -p 8500:8500 -p 8501:8501 -v {output}:/models/{name} -e MODEL_NAME={name} "
              "tensorflow/serving:2.20.0")


def _raise_if_storage_failure(error, output):
    """StorageError naming `output` when `error` is a write that failed (full or read-only disk);
    the export's staging folder is gone by then, and nothing was put in place."""
    from lhrcnn.errors import is_storage_failure, storage_error
    if is_storage_failure(error):
        raise storage_error("write the export to", output, error,
                            "free some space or make the folder writable, then run again (nothing was written)") from None


def _export_edge(args, experiment, config, overrides, checkpoint, output, category_ids, source, input_size):
    from lhrcnn.export import edge as edge_lib
    calibration = None
    if args.quantize == "int8":
        from lhrcnn.data.coco import load_coco
        from lhrcnn.paths import config_path, require_dir, require_file
        annotations = require_file(config_path(config.train_annotations), "int8 calibration: training annotations")
        images = require_dir(config_path(config.train_images), "int8 calibration: training images")
        try:
            calibration = load_coco(annotations, images, class_names=config.class_names)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f"int8 calibration: cannot read the training set {annotations}: {e}") from None
    size = input_size or edge_lib.default_input_size(config)
    print(f"exporting {checkpoint} as {args.format} ({args.quantize}, input uint8 [1, {size[0]}, {size[1]}, 3]) "
          f"to {output}")
    try:
        path = edge_lib.export_edge(
            experiment, checkpoint, output, fmt=args.format, quantize=args.quantize, input_size=size,
            overrides=overrides, category_ids=category_ids, calibration_dataset=calibration,
            calibration_images=args.calibration_images, verify=args.verify, resize=args.resize,
            info={"experiment": os.path.abspath(experiment), "checkpoint": os.path.abspath(checkpoint),
                  "category_ids_from": source})
    except (FileExistsError, ValueError, RuntimeError, ImportError) as e:
        _raise_if_storage_failure(e, output)
        raise UserError(str(e)) from None
    except Exception as e:
        _raise_if_storage_failure(e, output)
        raise
    with open(os.path.join(path, "export_info.json")) as f:
        info = json.load(f)
    count = sum(sum(k.values()) if isinstance(k, dict) else k for k in info["ops"].values())
    print(f"wrote {path}: {info['model_bytes'] / 2**20:.1f} MiB, {count} "
          f"ops of {len(info['ops'])} kinds" + (f", int8: {', '.join(info['int8_ops'])}" if info["int8_ops"] else ""))
    print(f"  evaluate it: lhrcnn test --model {os.path.join(path, 'model.' + args.format)} --experiment {experiment}")


# ----------------------------------------------------------------------------- convert


def run_convert(args):
    _load_config(args.experiment)
    from lhrcnn.convert import tf1
    try:
        prefix, report = tf1.convert(args.checkpoint, args.experiment, args.output, weights=args.weights,
                                     part=args.part)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    print(report.summary())
    use = ("lhrcnn test --experiment {e} --checkpoint {o}" if report.part == "detector"
           else "lhrcnn train --experiment {e} --init-checkpoint {o}")
    print(f"wrote {prefix} (and {os.path.join(args.output, tf1.REPORT_FILE)}); use it with "
          + use.format(e=args.experiment, o=args.output))


# ----------------------------------------------------------------------------- flops


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--input takes HxW (e.g. 320x320), got {text!r}") from None
    if h < 32 or w < 32:
        raise UsageError(f"--input {text}: both sides must be >= 32")
    return h, w


def run_flops(args):
    if bool(args.backbone) == bool(args.experiment):
        raise UsageError("give exactly one of --backbone NAME or --experiment DIR")
    if args.set and not args.experiment:
        raise UsageError("--set applies to --experiment only")
    size = _size(args.input) if args.input else None
    if args.experiment:
        overrides = parse_overrides(args.set)
        _load_config(args.experiment, overrides)
    from lhrcnn import flops
    from lhrcnn.backbones import BACKBONE_NAMES
    if args.backbone:
        if args.backbone not in BACKBONE_NAMES:
            import difflib
            close = difflib.get_close_matches(args.backbone, BACKBONE_NAMES, n=1)
            raise UsageError(f"--backbone: unknown backbone {args.backbone!r}"
                             + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" (known: {', '.join(BACKBONE_NAMES)})")
        h, w = size or (224, 224)
        result = flops.backbone_complexity(args.backbone, h, w, for_classification=not args.detection)
        what = f"{args.backbone} ({'detection features' if args.detection else 'ImageNet classifier'})"
    else:
        h, w = size or (None, None)
        try:
            result = flops.detector_complexity(args.experiment, h, w, **overrides)
        except ValueError as e:  # an invalid config value, an unregistered part
            raise UserError(str(e)) from None
        what = f"detector {result['name']} ({result['rois']} RoIs)"
    print(f"{what} at {result['input']}: {result['macs'] / 1e6:.1f} M multiply-adds, "
          f"{result['parameters'] / 1e6:.2f} M parameters ({result['trainable_parameters'] / 1e6:.2f} M trainable)")
    if "backbone_macs" in result:
        print(f"  backbone {result['backbone_macs'] / 1e6:.1f} M, the rest "
              f"{(result['macs'] - result['backbone_macs']) / 1e6:.1f} M")
    print("  by op: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in sorted(result["by_op"].items())))
    if result["unknown"]:
        print(f"  not counted (shape unknown until run time): {', '.join(result['unknown'][:5])}")
    if args.json:
        _atomic_write(args.json, json.dumps(result, indent=1).encode())


# ----------------------------------------------------------------------------- benchmark

SECTIONS = ("ops", "models", "throughput", "training", "export", "distribute", "family", "edge")


def _benchmarks_package():
    """The checkout's `benchmarks` package (next to lhrcnn/, or in the working directory)."""
    import importlib
    for root in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd()):
        if os.path.isfile(os.path.join(root, "benchmarks", "__init__.py")):
            if root not in sys.path:
                sys.path.insert(0, root)
            return importlib.import_module("benchmarks")
    raise UserError("lhrcnn benchmark needs the repository's benchmarks/ folder: run it from a checkout of the "
                    "repository (its root as the working directory)")


def run_benchmark(args):
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise UsageError(f"--sections: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    _benchmarks_package()
    import time

    import tensorflow as tf

    from benchmarks import ops_bench
    from benchmarks.timing import format_table
    ops_columns = [("case", "case", "{}"), ("baseline", "baseline", "{}"), ("op_ms", "ours ms", "{:.2f}"),
                   ("baseline_ms", "baseline ms", "{:.2f}"), ("speedup", "speed-up", "{:.1f}x"),
                   ("target", "target", "{:.0f}x"), ("floor_ms", "floor ms", "{:.3f}")]
    model_columns = [("model", "model", "{}"), ("input", "input", "{}"), ("latency_s", "latency s", "{:.3f}"),
                     ("gflop", "GFLOP", "{:.1f}"), ("floor_s", "floor s", "{:.3f}"), ("x_floor", "x floor", "{:.2f}"),
                     ("train_step_s", "train step s", "{:.2f}")]
    throughput_columns = [("what", "what", "{}"), ("input", "input (short/max or HxW)", "{}"),
                          ("images_per_s", "images/s", "{:.2f}"), ("s_per_step", "s/step", "{:.3f}"),
                          ("images_per_step", "images/step", "{}"), ("x_training", "x training", "{:.0f}x")]
    stage_columns = [("model", "model", "{}")] + [
        (f"{s}_{u}", f"{s} {'%' if u == 'pct' else 'ms'}", "{:.1f}")
        for s in ("backbone", "rpn_proposals", "thin_map", "rcnn_subnet", "postprocess") for u in ("ms", "pct")]
    repeats = args.repeats
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "tensorflow": tf.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}}
    for section in args.sections:
        if section == "ops":
            rows, extra = ops_bench.run(repeats)
            print(f"\n== ops (copy bandwidth {extra['copy_bandwidth_gb_s']:.1f} GB/s, "
                  f"{os.cpu_count()} cores, median of {repeats}) ==")
            print(format_table(rows, ops_columns))
        elif section == "models":
            from benchmarks import model_bench
            rows, extra = model_bench.run(args.models, repeats=max(3, repeats // 3))
            peer = None
            if args.peer:
                from benchmarks import peer_env
                peer = peer_env.run_peer()
                extra["peer"] = peer
            print(f"\n== models (batch 1, median; GEMM {extra['gemm_gflops']:.0f} GFLOP/s sets the floor) ==")
            print(format_table(rows, model_columns))
            print("\nstage split (ms, % of the whole model's latency)")
            print(format_table(rows, stage_columns))
            if peer:
                print("\npeer (TF Model Garden, same run):", ", ".join(f"{k} {v:.3g}" for k, v in peer.items()))
        elif section == "throughput":
            from benchmarks import throughput_bench
            rows, extra = throughput_bench.run(train_steps=args.train_steps, r101_steps=args.r101_steps)
            print(f"\n== throughput ({os.cpu_count()} cores; training on one replica) ==")
            print(format_table(rows, throughput_columns))
            ratio = extra["pipeline_vs_training"]
            print(f"input pipeline / training consumption: {ratio:.1f}x (target >= 3x: "
                  f"{'met' if ratio >= 3 else 'NOT met'})")
        elif section == "training":
            from benchmarks import training_bench
            rows, extra = training_bench.run(steps=max(10, args.train_steps))
            training_bench.print_report(rows, extra)
        elif section == "export":
            from benchmarks import export_bench
            rows, extra = export_bench.run(repeats=max(3, repeats // 2))
            print(f"\n== export ({extra['input']} -> eval {extra['eval_size']}, {extra['cpus']} cores) ==")
            print(format_table(rows, export_bench.COLUMNS))
            print(extra["note"])
        elif section == "distribute":
            from benchmarks import distribute_bench
            rows, extra = distribute_bench.run(steps=args.distribute_steps)
            print(f"\n== distribute (default experiment, {extra['input']}, 2 images per replica, "
                  f"{extra['cpus']} cores shared by all replicas) ==")
            print(format_table(rows, distribute_bench.COLUMNS))
            comm = extra["communication"]
            print(f"\nall-reduce per step, {comm['model']} on {comm['gpus']} GPUs: "
                  f"{comm['trainable_parameters'] / 1e6:.1f} M trainable parameters = "
                  f"{comm['gradient_bytes'] / 2 ** 20:.0f} MiB of float32 gradients; a ring all-reduce moves "
                  f"{comm['bytes_per_gpu_per_step'] / 2 ** 20:.0f} MiB in and out of every GPU:")
            for link, ms in comm["allreduce_ms"].items():
                print(f"  {link}: {ms:.1f} ms")
        elif section == "edge":
            from benchmarks import edge_bench
            rows, extra = edge_bench.run(args.edge_models or tuple(edge_bench.MODELS), repeats=max(5, repeats))
            print(f"\n== edge (batch 1, fresh child process per cell, median of {extra['rounds']} interleaved rounds; "
                  f"{extra['cpus']} cores; GEMM {extra['gemm_gflops']:.0f} GFLOP/s) ==")
            print(format_table(rows, edge_bench.COLUMNS))
            print("GEMM floors: " + ", ".join(f"{r['model']} {r['gemm_floor_ms']:.1f} ms" for r in rows
                                               if r["runtime"] == "tf_savedmodel"))
        else:  # family
            from benchmarks import family_bench
            rows, extra = family_bench.run(args.family_models or tuple(family_bench.MODELS),
                                           repeats=max(5, repeats))
            print(f"\n== family (batch 1, median after warm-up; {extra['cpus']} cores; GEMM peak "
                  f"{extra['gemm_gflops'] / 2:.0f} GMAC/s) ==")
            print(format_table(rows, family_bench.COLUMNS))
        results[section] = {"rows": rows, **extra}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    _atomic_write(args.json, json.dumps(results, indent=1).encode())
    print(f"\nwrote {args.json}")


# ----------------------------------------------------------------------------- info


def run_new_experiment(args):
    from lhrcnn.experiment_files import new_experiment
    from lhrcnn.paths import require_dir
    source = getattr(args, "from")
    require_dir(source, "--from: experiment folder")
    overrides = parse_overrides(args.set)
    try:
        dest = new_experiment(source, args.destination, overrides)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {os.path.join(dest, 'config.py')} and {os.path.join(dest, 'network_desp.py')}; "
          f"train it with: lhrcnn train --experiment {dest}")


def find_experiments(root="experiments"):
    """Folders under `root` holding both config.py and network_desp.py, sorted, relative to root's
    parent as given (e.g. experiments/lhrcnn/thundernet.snet146.synthetic)."""
    found = []
    if os.path.isdir(root):
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            if "config.py" in files and "network_desp.py" in files:
                found.append(folder)
    return sorted(found)


def _op_kernel_devices():
    """{op name: sorted device types with a registered kernel} of the loaded lhrcnn ops."""
    from tensorflow.python.framework import kernels

    from lhrcnn import ops
    library = ops._load_library()
    names = sorted(n for n in dir(library) if n.startswith("Lhrcnn")) if library is not None else []
    return {n: sorted({k.device_type for k in kernels.get_registered_kernels_for_op(n).kernel}) for n in names}


def _ops_build_info(ops):
    """lhrcnn.ops.build_info() when the ops module has it, else the same keys from what it does
    have (custom_ops_available, custom_ops_load_error) and the build record _lhrcnn_ops.json."""
    if callable(getattr(ops, "build_info", None)):
        return ops.build_info()
    import tensorflow as tf
    path = os.path.join(os.path.dirname(ops.library_path()), "_lhrcnn_ops.json")
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as e:
        record = {"built": None, "error": f"unreadable build record {path}: {e}"}
    record_ = record or {}
    loaded = ops.custom_ops_available()
    return {"loaded": loaded, "load_error": ops.custom_ops_load_error(), "library": ops.library_path(),
            "record": path if record is not None else None, "built": record_.get("built"),
            "build_error": record_.get("error"), "tensorflow_built": record_.get("tensorflow"),
            "tensorflow_runtime": tf.__version__,
            "version_match": record_.get("tensorflow") == tf.__version__ if record_.get("tensorflow") else None,
            "cuda": bool(record_.get("cuda")), "cuda_version": record_.get("cuda_version"),
            "cuda_archs": list(record_.get("archs") or []), "cuda_runtime": record_.get("cuda_runtime"),
            "tensorflow_runtime_cuda": tf.test.is_built_with_cuda(),
            "backend": os.environ.get("LHRCNN_OPS", "").strip() or ("custom" if loaded else "tf")}


def run_info(args):
    import numpy as np

    import lhrcnn
    lines = [f"lhrcnn      {lhrcnn.__version__} ({os.path.dirname(os.path.abspath(lhrcnn.__file__))})",
             f"python      {platform.python_version()} ({sys.executable})",
             f"numpy       {np.__version__}"]
    import tensorflow as tf
    lines.append(f"tensorflow  {tf.__version__}" + (" (built with CUDA)" if tf.test.is_built_with_cuda() else ""))
    gpus = tf.config.list_physical_devices("GPU")
    lines.append(f"gpus        {len(gpus)} visible" + (f" ({', '.join(g.name for g in gpus)})" if gpus else ""))
    from lhrcnn import ops
    info = _ops_build_info(ops)
    if info.get("loaded"):
        lines.append(f"custom ops  loaded ({info.get('library')})")
        devices = _op_kernel_devices()
        for device in ("CPU", "GPU"):
            with_kernel = [n for n, d in devices.items() if device in d]
            lines.append(f"  {device} kernels  {len(with_kernel)} of {len(devices)} ops"
                         + (f" ({', '.join(with_kernel)})" if with_kernel else ""))
    else:
        lines.append(f"custom ops  not loaded: {info.get('load_error')} (the ops' pure-TF twins are used)")
    if info.get("record") is None and info.get("build_error") is None:
        lines.append("ops build   no build record (lhrcnn/_lhrcnn_ops.json)")
    elif info.get("built") is False:
        lines.append(f"ops build   failed: {info.get('build_error')}")
    elif info.get("build_error"):
        lines.append(f"ops build   {info.get('build_error')}")
    else:
        archs = info.get("cuda_archs") or []
        cuda = (f"CUDA {info.get('cuda_version')}, archs {', '.join(archs)}" if info.get("cuda")
                else "no CUDA kernels (CPU only)")
        match = ("" if info.get("version_match") is not False
                 else f" (running {info.get('tensorflow_runtime')}: rebuild the ops)")
        lines.append(f"ops build   {cuda}; built against TensorFlow {info.get('tensorflow_built')}{match}")
        if info.get("cuda") and info.get("cuda_runtime"):
            lines.append(f"cuda runtime {info['cuda_runtime']}")
    lines.append(f"ops backend {info.get('backend')} (what the ops use by default; LHRCNN_OPS=tf|custom sets it)")
    experiments = find_experiments(args.experiments)
    lines.append(f"experiments {len(experiments)} in {os.path.abspath(args.experiments)}"
                 + ("" if experiments or os.path.isdir(args.experiments) else " (no such folder)"))
    lines.extend(f"  {e}" for e in experiments)
    print("\n".join(lines))


# ----------------------------------------------------------------------------- the commands

_EXPERIMENT = "Experiment folder (holds config.py and network_desp.py)."
_CHECKPOINT = ("Checkpoint prefix or folder (its latest checkpoint). Default: the latest in "
               "output/<user>/<experiment>/model_dump/.")

COMMANDS = {c.name: c for c in (
    Command("train", "train an experiment (resumes from its latest checkpoint)", """\
Trains an experiment. Outputs go to output/<user>/<experiment>/ (or --output): model_dump/
(checkpoints) and tensorboard/. A restart resumes from the latest checkpoint in model_dump/ (same
step, learning rate and data position).

--strategy auto (default) trains multi-worker when TF_CONFIG names a cluster, mirrored when several
GPUs are visible, on one device otherwise. Each replica takes the experiment's train_batch_per_gpu
images; the global batch is that x replicas and the learning rate basic_lr x replicas. Multi-worker:
run the same command on every node with its own TF_CONFIG; model_dump/ must be on a filesystem all of
them reach (only the chief writes there).

--init-checkpoint takes a TF2 checkpoint (another run's, or one of `lhrcnn convert`) or a TF1 one: a
slim ImageNet checkpoint (initialises the backbone) or a checkpoint of the original code (the whole
detector), mapped through the name tables of lhrcnn/convert/tf1.py.""", (
        Flag("experiment", "string", None, _EXPERIMENT, required=True),
        Flag("init_checkpoint", "string", None, "Checkpoint (prefix or folder) to initialise the model from when "
             "the run has no checkpoint of its own: TF2, or TF1 (a slim ImageNet checkpoint initialises the "
             "backbone; one of the original code the whole detector)."),
        Flag("steps", "integer", None, "Total training steps (default: the config's schedule).", lower_bound=1),
        Flag("output", "string", None, "Output folder (default: output/<user>/<experiment>)."),
        Flag("checkpoint_every", "integer", 500, "Steps between checkpoints.", lower_bound=1),
        Flag("log_every", "float", 10.0, "Seconds between progress lines."),
        Flag("summary_every", "integer", None, "Steps between TensorBoard loss summaries, and one at the last "
             "step (0 = the last step only; default: the trainer's, 20).", lower_bound=0),
        Flag("eval_every", "integer", 0, "Steps between evaluations on the eval set, and one after the last step "
             "(0 = off).", lower_bound=0),
        Flag("eval_annotations", "string", None, "COCO json of the periodic evaluation (default: the config's "
             "eval_annotations)."),
        Flag("eval_images", "string", None, "Image folder of the periodic evaluation (default: the config's "
             "eval_images)."),
        Flag("eval_images_to_draw", "integer", None, "Eval images drawn with their detections into each "
             "evaluation's TensorBoard image summary (default: the trainer's, 4).", lower_bound=0),
        Flag("strategy", "enum", "auto", "tf.distribute strategy (auto: multi_worker with a TF_CONFIG cluster, "
             "mirrored with several GPUs, else one device).", choices=("auto", "one_device", "mirrored",
                                                                       "multi_worker")),
        Flag("num_gpus", "integer", None, "mirrored: use GPUs 0..N-1 (default: all visible).", lower_bound=1),
        Flag("cpu_replicas", "integer", None, "mirrored without GPUs: split the CPU into N logical devices (one "
             "replica each; for tests and benchmarks).", lower_bound=1),
        Flag("communication", "enum", "auto", "multi_worker all-reduce implementation.",
             choices=("auto", "ring", "nccl")),
        SET, VERBOSE), run_train),
    Command("test", "COCO evaluation of a trained detector", """\
Runs the detector over the eval set, writes <output>/results.json (COCO results entries) and
<output>/metrics.json (the 12 COCOeval statistics, images, images/s, checkpoint) and prints the
statistics. Defaults: the latest checkpoint in output/<user>/<experiment>/model_dump/, the config's
eval_annotations / eval_images, output/<user>/<experiment>/eval_dump/. Paths from the config and on
the command line are relative to the working directory.

--model evaluates an edge export (model.tflite or model.onnx of `lhrcnn export --format
tflite|onnx`) instead, run by LiteRT or ONNX Runtime, with the same COCO evaluation; --experiment
then only gives the eval set and the output folder (output/<user>/<experiment>/eval_dump/<the
model's folder>_<format>/), and may be left out when --annotations, --images and --output are given.""", (
        Flag("experiment", "string", None, _EXPERIMENT),
        Flag("checkpoint", "string", None, _CHECKPOINT),
        Flag("model", "string", None, "An edge export to evaluate (model.tflite or model.onnx) instead of a "
             "checkpoint.", metavar="FILE"),
        Flag("annotations", "string", None, "COCO instances json (default: the config's eval_annotations)."),
        Flag("images", "string", None, "Image folder (default: the config's eval_images)."),
        Flag("output", "string", None, "Where results.json and metrics.json go (default: "
             "output/<user>/<experiment>/eval_dump/)."),
        Flag("max_images", "integer", None, "Evaluate only the first N images in image-id order (scored on their "
             "own ground truth only).", lower_bound=1),
        Flag("batch_size", "integer", 1, "Images per detector call.", lower_bound=1),
        SET, VERBOSE), run_test),
    Command("predict", "detections on images: printed, drawn (PNG) and written (JSON)", """\
Runs a detector on each image (any size; JPEG, PNG, GIF, BMP or WebP) with the eval preprocessing:
an experiment's checkpoint in process (--experiment, --checkpoint, --set) or an export of `lhrcnn
export` (--saved-model: a version folder or the model's base folder, whose newest version is used).
Prints each detection (class, score, box x1, y1, x2, y2 in the image's pixels) and writes
<output>/<name>_detections.png (drawn) and <output>/<name>_detections.json, each atomically.""", (
        Flag("experiment", "string", None, _EXPERIMENT),
        Flag("checkpoint", "string", None, _CHECKPOINT),
        Flag("saved_model", "string", None, "An export of `lhrcnn export` instead of --experiment: a version "
             "folder, or the model's base folder (its newest version)."),
        Flag("model", "string", None, "An edge export (model.tflite or model.onnx of `lhrcnn export --format "
             "tflite|onnx`) instead of --experiment, run by LiteRT or ONNX Runtime.", metavar="FILE"),
        Flag("output", "string", None, "Output folder (default: output/<user>/<experiment>/predict/, or "
             "output/predict/ with --saved-model)."),
        Flag("score_threshold", "float", None, "Keep detections scoring above this (default: the config's "
             "test_score_threshold, or the export's)."),
        SET, VERBOSE), run_predict, positional=("images", "IMAGE", "image files")),
    Command("demo", "`predict` with the demo's defaults (score > 0.5, output .../demo/)", """\
Detections on your own images: each image is preprocessed as the eval pipeline does (eval short/max
side, mean, padding); for each, <output>/<name>_detections.png (boxes, class names, scores drawn) and
<output>/<name>_detections.json are written. Default output: output/<user>/<experiment>/demo/.""", (
        Flag("experiment", "string", None, _EXPERIMENT, required=True),
        Flag("checkpoint", "string", None, "Checkpoint prefix or folder (its latest checkpoint).", required=True),
        Flag("output", "string", None, "Output folder (default: output/<user>/<experiment>/demo/)."),
        Flag("score_threshold", "float", 0.5, "Keep detections scoring above this."),
        VERBOSE), run_demo, positional=("images", "IMAGE", "image files")),
    Command("export", "export a trained detector: SavedModel (TF Serving), LiteRT or ONNX", """\
--format savedmodel (default) writes <output>/<version>/ (saved_model.pb, variables/, assets.extra/ with the warm-up requests,
label_map.json and export_info.json), atomically; an existing version is never overwritten.
Signatures: serving_default (images uint8 [N, H, W, 3]) and serve_bytes (image_bytes string [N],
JPEG or PNG); outputs detection_boxes (normalised y1, x1, y2, x2), detection_scores,
detection_classes (category ids), num_detections, detection_boxes_pixels (x1, y1, x2, y2).

--ops tf (default) uses stock TensorFlow ops only (any tensorflow_model_server); --ops custom puts the
compiled lhrcnn ops in the graph (a server built with //ops:lhrcnn_ops). Defaults: the latest
checkpoint in output/<user>/<experiment>/model_dump/, the next version, the config's
test_max_detections and test_score_threshold, category ids from --annotations or the config's
eval_annotations (else COCO's ids for COCO's classes, else the class index).

--format tflite / onnx writes <output>/ (model.tflite or model.onnx, label_map.json,
export_info.json) for runtimes without TensorFlow: one fixed input, uint8 [1, H, W, 3]
(--input-size), with the eval preprocessing inside and the SavedModel's outputs; LiteRT models use
builtin ops only. `lhrcnn test --model` and `lhrcnn predict --model` run them (docs/edge.md).""", (
        Flag("experiment", "string", None, _EXPERIMENT, required=True),
        Flag("checkpoint", "string", None, _CHECKPOINT),
        Flag("output", "string", None, "The model's base folder (TF Serving's model_base_path); the export goes "
             "to <output>/<version>/.", required=True),
        Flag("version", "integer", None, "Version number (default: one more than the largest present).",
             lower_bound=1),
        Flag("ops", "enum", "tf", "tf: stock TensorFlow ops only (any model server); custom: the compiled lhrcnn "
             "ops (a server built with //ops:lhrcnn_ops).", choices=("tf", "custom")),
        Flag("max_detections", "integer", None, "Detections per image (default: the config's "
             "test_max_detections).", lower_bound=1),
        Flag("score_threshold", "float", None, "Keep detections scoring above this (default: the config's "
             "test_score_threshold)."),
        Flag("max_image_pixels", "integer", None, "serve_bytes refuses (INVALID_ARGUMENT) images that would decode "
             "to more pixels, read from their header before decoding (default: the config's max_image_pixels, "
             "8192 x 8192).", lower_bound=1),
        Flag("annotations", "string", None, "COCO json whose categories give detection_classes' ids (default: the "
             "config's eval_annotations when it exists)."),
        Flag("verify", "boolean", True, "Load the written model and run its warm-up requests before putting the "
             "version in place."),
        Flag("format", "enum", "savedmodel", "savedmodel: a SavedModel version for TF Serving; tflite: a LiteRT "
             "model (builtin ops only); onnx: an ONNX model (tf2onnx, opset 17). tflite and onnx write "
             "model.<format>, label_map.json and export_info.json into --output.",
             choices=("savedmodel", "tflite", "onnx")),
        Flag("quantize", "enum", "none", "tflite: none (float32), float16 (weights), dynamic (int8 weights), int8 "
             "(weights and activations, calibrated on training images; ops without int8 kernels stay float).",
             choices=("none", "float16", "dynamic", "int8")),
        Flag("input_size", "string", None, "tflite / onnx: the fixed input HxW in pixels (default: the eval short "
             "side, square); other images are letterboxed into it.", metavar="HxW"),
        Flag("calibration_images", "integer", 100, "int8: training images to calibrate on (a seeded random choice).",
             lower_bound=1),
        Flag("resize", "boolean", True, "tflite / onnx: the model resizes its input by the eval rule (a frame of "
             "the input size in, detections out); --no-resize: the input is an image already at the eval scale in "
             "the canvas (what lhrcnn's runtime makes of any image), so nothing is resampled twice."),
        SET, VERBOSE), run_export),
    Command("convert", "convert a TF1 checkpoint (the original code's, or slim ImageNet) to TF2", """\
Converts a TF1 checkpoint of the original code (or a slim ImageNet checkpoint) to a TF2 checkpoint of
an experiment's detector, through the explicit name tables of lhrcnn/convert/tf1.py. --checkpoint is a
TF1 checkpoint prefix (read through its .index), a V1 single-file checkpoint (resnet_v1_101.ckpt) or a
folder with a `checkpoint` file. The output folder receives converted-0.{index,data-*}, a
`checkpoint` file and conversion.json, written to a temporary folder and renamed, so it is complete
or absent. A detector checkpoint is evaluated by `lhrcnn test --checkpoint DIR`; an ImageNet
checkpoint (it has `logits`) gives a backbone-only one for `lhrcnn train --init-checkpoint DIR`. A
variable without a source, a tensor of the wrong shape or a name the table does not know is an error
that lists them; nothing is written then.""", (
        Flag("checkpoint", "string", None, "TF1 checkpoint: prefix, V1 file, or folder with a `checkpoint` file.",
             required=True),
        Flag("experiment", "string", None, "Experiment folder (config.py + network_desp.py) whose detector "
             "receives the weights.", required=True),
        Flag("output", "string", None, "Folder to write the TF2 checkpoint to (must not exist or be empty).",
             required=True),
        Flag("weights", "enum", "raw", "raw: the trained weights (what the original's test.py evaluates); ema: "
             "each trainable tensor from its /ExponentialMovingAverage shadow.", choices=("raw", "ema")),
        Flag("part", "enum", "auto", "What to convert: the whole detector, the backbone only, or auto (backbone "
             "for an ImageNet checkpoint, which holds `logits`).", choices=("auto", "detector", "backbone")),
        VERBOSE), run_convert),
    Command("flops", "multiply-adds and parameters of a backbone or of an experiment's detector", """\
Multiply-adds (the papers' FLOPs) and parameters, counted on the built Keras graph. --backbone: the
ImageNet-classification form (global pool + fc 1000) at 224x224 by default, the form of the papers'
figures; --detection counts the detection form (features only) instead. --experiment: the whole
detector in inference (its test-time proposals through the R-CNN head) at the experiment's eval short
side, square, unless --input is given; --set overrides config fields.""", (
        Flag("backbone", "string", None, "Backbone name (lhrcnn.backbones.BACKBONE_NAMES)."),
        Flag("experiment", "string", None, "Experiment folder."),
        Flag("input", "string", None, "HxW in pixels (default: 224x224 for a backbone, the eval size for an "
             "experiment).", metavar="HxW"),
        Flag("detection", "boolean", False, "Count the backbone's detection form, not the classifier."),
        Flag("json", "string", None, "Also write the numbers to this json file."),
        SET, VERBOSE), run_flops),
    Command("benchmark", "benchmark tables and a json of the results (needs a checkout)", """\
Prints a table per section and writes all results to a json file. Sections: ops (custom ops against
stock-TF formulations), models (whole detectors: latency, GFLOP, floor, stage split, training step),
throughput (training images/s, the input pipeline alone, evaluation images/s), export (the
SavedModel's latency with stock and custom ops, batch 1 and 8), distribute (training on 1 and 2
logical CPU devices and 1 and 2 local workers, and the R-101 all-reduce cost on 8 GPUs), family
(ThunderNet SNet49/146/535, DetNet-59 FPN and Double-Head R-50-FPN: batch-1 CPU latency), edge
(TF SavedModel vs LiteRT float32 / float16 / int8 vs ONNX Runtime, 1 thread and all cores, file
size, peak memory). Default: all seven. --peer also measures TF Model Garden's Faster R-CNN R-50-FPN in a separate environment
(installed on first use). Targets are reported, never asserted.""", (
        Flag("sections", "multi", list(SECTIONS), "Section to run (repeatable): " + ", ".join(SECTIONS) + ".",
             metavar="SECTION"),
        Flag("family_models", "list", None, "Comma-separated models of the family section (default: all; see "
             "benchmarks/family_bench.py)."),
        Flag("edge_models", "list", None, "Comma-separated models of the edge section (default: all; see "
             "benchmarks/edge_bench.py)."),
        Flag("distribute_steps", "integer", 10, "Timed training steps per case (distribute).", lower_bound=1),
        Flag("train_steps", "integer", 30, "Timed training steps of the default model (throughput).",
             lower_bound=1),
        Flag("r101_steps", "integer", 2, "Timed training steps of R-101 at 800x1333 (0 = skip).", lower_bound=0),
        Flag("models", "list", ["r101", "xception", "synthetic"], "Comma-separated models of the models section."),
        Flag("peer", "boolean", False, "Also time TF Model Garden's Faster R-CNN R-50-FPN (models section)."),
        Flag("repeats", "integer", 15, "Timed repetitions per case (median reported).", lower_bound=1),
        Flag("json", "string", "output/benchmark.json", "Where to write the results."),
        VERBOSE), run_benchmark),
    Command("new-experiment", "a new experiment folder from an existing one, with --set overrides", """\
Writes the experiment folder DEST (config.py, network_desp.py) from the experiment --from: its
config.py subclasses lhrcnn.config.Config directly and writes out every field that differs from
Config's default (the source's own and those it inherits), with the --set overrides applied, plus
the data paths and class_names; network_desp.py is copied. Outputs of the new experiment go to
output/<DEST's parent folder>/<DEST's folder>/. DEST must not exist; it is written complete or not
at all. Example: lhrcnn new-experiment experiments/me/pets --from
experiments/templates/thundernet.snet146.coco_json --set train_annotations=data/pets/train.json""", (
        Flag("from", "string", None, "The experiment folder to start from.", required=True, metavar="EXPERIMENT"),
        SET, VERBOSE), run_new_experiment, positional=("destination", "DEST", "the new experiment folder", None)),
    Command("info", "versions, the compiled ops and their kernels, the experiments found", """\
Prints the versions of lhrcnn, Python, NumPy and TensorFlow, the visible GPUs, whether the compiled
ops loaded (and why not), which devices their kernels are registered for, the CUDA architectures
they were built for (lhrcnn/_lhrcnn_ops.json), and the experiments (folders with config.py and
network_desp.py) under --experiments.""", (
        Flag("experiments", "string", "experiments", "Folder searched for experiments."),
        VERBOSE), run_info),
)}


# ----------------------------------------------------------------------------- argparse


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <prog>: <message> (see <prog> --help)`, status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _forms(name):
    """--dash-form first (shown in help), then --underscore_form."""
    forms = ["--" + name.replace("_", "-")]
    if "_" in name:
        forms.append("--" + name)
    return forms


def _bounded(kind, lower):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if lower is not None and value < lower:
            raise argparse.ArgumentTypeError(f"{value} is below the smallest allowed value, {lower}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _comma_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_argument(parser, flag):
    text = flag.help
    if flag.default not in (None, False, []) and flag.kind != "boolean":
        shown = ",".join(flag.default) if flag.kind == "list" else (
            " ".join(flag.default) if flag.kind == "multi" else flag.default)
        text += f" Default: {shown}."
    dash = flag.name.replace("_", "-")
    if flag.kind == "boolean":
        parser.add_argument(*_forms(flag.name), dest=flag.name, action="store_true", default=flag.default,
                            help=text + (f" On by default; --no-{dash} turns it off." if flag.default else ""))
        negations = list(dict.fromkeys(["--no-" + dash, "--no_" + flag.name, "--no" + flag.name]))
        parser.add_argument(*negations, dest=flag.name, action="store_false", help=argparse.SUPPRESS)
        return
    kwargs = dict(dest=flag.name, help=text, required=flag.required, metavar=flag.metavar)
    if flag.kind == "enum":
        kwargs.update(choices=flag.choices, default=flag.default,
                      metavar=flag.metavar or "{" + ",".join(flag.choices) + "}")
    elif flag.kind == "multi":
        kwargs.update(action="append", default=None)
    elif flag.kind == "list":
        kwargs.update(type=_comma_list, default=flag.default)
    elif flag.kind == "integer":
        kwargs.update(type=_bounded(int, flag.lower_bound), default=flag.default)
    elif flag.kind == "float":
        kwargs.update(type=_bounded(float, flag.lower_bound), default=flag.default)
    else:
        kwargs.update(default=flag.default)
    if kwargs["metavar"] is None:
        kwargs.pop("metavar")
    parser.add_argument(*_forms(flag.name), **kwargs)


def build_parser(prog="lhrcnn"):
    """The argparse parser of every command (the `command` attribute names the one given)."""
    import lhrcnn
    parser = _Parser(prog=prog, description="Light-Head R-CNN and related two-stage detectors: training, "
                     "evaluation, inference, export and tools.", allow_abbrev=False,
                     epilog=f"`{prog} COMMAND --help` lists a command's flags.")
    parser.add_argument("--version", action="version", version=f"lhrcnn {lhrcnn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)
    for command in COMMANDS.values():
        sub = commands.add_parser(command.name, help=command.summary, description=command.description,
                                  allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
        for flag in command.flags:
            _add_argument(sub, flag)
        if command.positional:
            name, metavar, text, *nargs = command.positional
            sub.add_argument(name, nargs=(nargs or ["+"])[0], metavar=metavar, help=text)
    return parser


def _fill_defaults(command, args):
    for flag in COMMANDS[command].flags:
        if flag.kind == "multi" and getattr(args, flag.name) is None:
            setattr(args, flag.name, list(flag.default or []))
    return args


# ----------------------------------------------------------------------------- running


def _quiet_tensorflow(verbose):
    """TensorFlow's C++ logs: with verbose, all (TF_CPP_MIN_LOG_LEVEL=0); else only FATAL ones (3),
    unless the environment sets the level. Level 3 also drops the start-up ERROR lines of a machine
    with CUDA libraries and no GPU driver (`failed call to cuInit`); failures still raise."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(command, args):
    """Runs `command` on parsed `args`; returns the exit status: 0, 1 after a user error, 2 after a
    usage error (each printed as one `error: ...` line on stderr)."""
    _quiet_tensorflow(args.verbose)
    try:
        COMMANDS[command].run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


class _LhrcnnInfo(logging.Filter):
    """Warnings and errors, and INFO messages logged by lhrcnn's own modules."""

    def __init__(self):
        super().__init__()
        self.package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def filter(self, record):
        return record.levelno >= logging.WARNING or os.path.abspath(record.pathname).startswith(self.package)


def _log_to_stderr(verbose):
    """absl's messages as plain lines on stderr: lhrcnn's INFO lines (the trainer's `resumed from
    ...`) and everyone's warnings; with verbose, every INFO message (TensorFlow's too)."""
    from absl import logging as absl_logging  # first: its logger names the caller's file, not absl's
    absl_logger = absl_logging.get_absl_logger()
    if not absl_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        if not verbose:
            handler.addFilter(_LhrcnnInfo())
        absl_logger.addHandler(handler)
        absl_logger.propagate = False
    absl_logger.setLevel(logging.INFO)
    if verbose:
        logging.basicConfig(level=logging.INFO)


def parse_args(argv, prog="lhrcnn"):
    """The parsed command line `argv` (a list without the program name): a Namespace whose
    `command` names the command and whose attributes are its flags (underscore names). A usage
    mistake prints one `error: ...` line and exits with status 2."""
    args = build_parser(prog).parse_args(list(argv))
    if args.command is None:
        build_parser(prog).error("give a command")
    return _fill_defaults(args.command, args)


def main(argv=None):
    """The `lhrcnn` command: parses `argv` (default: sys.argv[1:]), runs the command and returns
    its exit status (without a command: the help, status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_help(sys.stderr)
        return 2
    args = parse_args(argv)
    _log_to_stderr(args.verbose)
    return run(args.command, args)


# ----------------------------------------------------------------------------- scripts/*.py


def define_absl_flags(command):
    """Defines `command`'s flags as absl flags (each multi-word one with its dash-form alias), for
    scripts/<script>.py to parse with absl.app.run."""
    from absl import flags
    for flag in COMMANDS[command].flags:
        name, default, text = flag.name, flag.default, flag.help
        if flag.kind == "string":
            flags.DEFINE_string(name, default, text)
        elif flag.kind == "integer":
            flags.DEFINE_integer(name, default, text, lower_bound=flag.lower_bound)
        elif flag.kind == "float":
            flags.DEFINE_float(name, default, text, lower_bound=flag.lower_bound)
        elif flag.kind == "boolean":
            flags.DEFINE_boolean(name, default, text)
        elif flag.kind == "enum":
            flags.DEFINE_enum(name, default, list(flag.choices), text)
        elif flag.kind == "multi":
            flags.DEFINE_multi_string(name, list(default or []), text)
        elif flag.kind == "list":
            flags.DEFINE_list(name, default, text)
        else:
            raise ValueError(f"flag {name}: unknown kind {flag.kind!r}")
        if "_" in name:
            flags.DEFINE_alias(name.replace("_", "-"), name)
        if flag.required:
            flags.mark_flag_as_required(name)
        # --help lists the main module's key flags: the script's, although defined here
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def absl_main(command):
    """main(argv) for absl.app.run: runs `command` on the parsed absl flags (argv[1:]: the
    positional arguments); exits with status 1 or 2 after an error."""
    spec = COMMANDS[command]

    def main(argv):
        from absl import flags
        values = {flag.name: flags.FLAGS[flag.name].value for flag in spec.flags}
        args = argparse.Namespace(command=command, **values)
        rest = list(argv[1:])
        if spec.positional:
            if not rest:
                print(f"error: give at least one {spec.positional[1]} (see {os.path.basename(argv[0])} --help)",
                      file=sys.stderr)
                sys.exit(2)
            setattr(args, spec.positional[0], rest)
        elif rest:
            print(f"error: unexpected arguments: {' '.join(rest)} (see {os.path.basename(argv[0])} --help)",
                  file=sys.stderr)
            sys.exit(2)
        status = run(command, args)
        if status:
            sys.exit(status)

    return main


def _absl_flags_parser(argv):
    """absl's flag parsing with one-line errors (exit status 2)."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split())
        print(f"error: {message} (see {os.path.basename(argv[0])} --help)", file=sys.stderr)
        sys.exit(2)


def run_script(main):
    """absl.app.run(main) for scripts/<script>.py, with one-line flag errors."""
    from absl import app
    app.run(main, flags_parser=_absl_flags_parser)
