"""Edge exports, for runtimes without TensorFlow: LiteRT (.tflite, builtin ops only, float32,
float16 weights, dynamic-range int8 weights, or full-integer int8 calibrated on training images)
and ONNX (.onnx through tf2onnx, stock ops).

The exported graph is the detector of the stock-op SavedModel (the ops' pure-TF twins, config
ops_backend "tf") at one fixed input, uint8 [1, H, W, 3]: the eval preprocessing inside (resize by
the eval rule of H x W, mean, padding to the size divisor), then the detector, then the serving
outputs (lhrcnn.export.serving.serving_outputs). At a static batch of 1 the graph has no control
flow: the batched NMS twin unrolls into one NMS op per problem (lhrcnn.ops.NMS_UNROLL_LIMIT),
which LiteRT maps to its builtin NON_MAX_SUPPRESSION_V4. Running an export: edge_runtime.EdgeModel.

Full-integer int8 quantises the convolutions and fully connected layers (weights and
activations); ops without an int8 kernel, or whose inputs are integers or boxes (the anchor and
box arithmetic, top-k, NMS, the outputs), stay float32 in the same file, and export_info.json
lists which ops ran in which type. TensorFlow 2.20's calibrator (tf.lite's legacy calibration
wrapper) crashes with SIGSEGV in FeedTensor on a model with WHILE subgraphs; the loop-free graph
above avoids that path, and the conversion runs in a child process all the same, so a converter
crash is an error naming the phase, not a dead command.

The folder written holds model.tflite or model.onnx, label_map.json and export_info.json (input
size, quantisation, the ops used, class names and category ids, eval sizes and mean); it is
written under a temporary name and renamed into place, so it is complete or absent.
"""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from lhrcnn.export import categories as categories_lib
from lhrcnn.export import edge_runtime
from lhrcnn.paths import make_staging_dir, remove_stale_staging

FORMATS = ("tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
ONNX_OPSET = 17


def default_input_size(config):
    """(H, W) of an edge export when none is given: the eval short side, square (the eval rule is
    then the identity on the canvas: its scale is 1)."""
    side = int(config.eval_image_short_size)
    return side, side


def parse_input_size(text):
    """(H, W) of "HxW" (or "S" for S x S); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not match:
        raise ValueError(f"input size {text!r} is not HxW (e.g. 320x320)")
    height, width = int(match.group(1)), int(match.group(2) or match.group(1))
    if not (16 <= height <= 4096 and 16 <= width <= 4096):
        raise ValueError(f"input size {height}x{width} must be between 16 and 4096 pixels a side")
    return height, width


def in_model_scale(config, input_size, resize=True):
    """The scale the model's own preprocessing applies to its H x W input: the eval rule's, or 1
    without the resize."""
    if not resize:
        return 1.0
    return edge_runtime.eval_scale(*input_size, config.eval_image_short_size, config.eval_image_max_size)


def edge_function(detector, input_size, category_ids, resize=True):
    """A tf.function of uint8 [1, H, W, 3] `images` -> the serving outputs (one fixed shape).
    resize: the eval preprocessing resizes the input by the eval rule (a camera frame of that
    size in, detections out); False: the input is an image already at the eval scale, placed in
    the H x W canvas (what edge_runtime.letterbox makes), and only the mean and the padding are
    applied, so no pixel is resampled twice."""
    import tensorflow as tf

    from lhrcnn.data import preprocess
    from lhrcnn.data.preprocess import preprocess_for_eval
    from lhrcnn.export import serving
    config = detector.config
    table = np.asarray([0] + [int(c) for c in category_ids[1:]], np.float32)
    height, width = input_size

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8, name=edge_runtime.INPUT_NAME)],
                 autograph=False)
    def detect(images):
        if resize:
            padded, image_info = preprocess_for_eval(tf.cast(images, tf.float32), config)
        else:
            padded = preprocess.pad_to_multiple(preprocess.normalise(tf.cast(images, tf.float32), config.image_mean),
                                                config.size_divisor)
            image_info = tf.constant([[height, width, 1.0, height, width]], tf.float32)
        detections = detector({"images": padded, "image_info": image_info}, training=False)
        # the table is a constant of the graph, not a captured tensor (which tf2onnx makes an input)
        return serving.serving_outputs(detections, image_info, tf.constant(table))

    return detect


# ----------------------------------------------------------------------------- LiteRT


def _tflite_operators(model):
    """(op name, type of its first input, name of its first output) of every operator of every
    subgraph of a .tflite flatbuffer (bytes); custom ops as "CUSTOM:<code>"."""
    from tensorflow.lite.python import schema_py_generated as schema
    parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    for subgraph in parsed.subgraphs:
        for op in subgraph.operators:
            code = parsed.operatorCodes[op.opcodeIndex]
            number = max(code.builtinCode, code.deprecatedBuiltinCode)
            if number == schema.BuiltinOperator.CUSTOM:
                name = "CUSTOM:" + (code.customCode or b"").decode()
            else:
                name = builtin.get(number, f"BUILTIN_{number}")
            inputs = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0]
            kind = types.get(subgraph.tensors[inputs[0]].type, "?") if inputs else "none"
            outputs = op.outputs if op.outputs is not None else []
            output = subgraph.tensors[outputs[0]].name.decode() if len(outputs) else None
            yield name, kind, output


def tflite_op_types(model):
    """{op name: {the type it computes in: count}} over every subgraph of a .tflite flatbuffer
    (bytes): the type of its first input (int8 for a quantised kernel, float32 for a float one;
    QUANTIZE counts as float32, DEQUANTIZE as int8); custom ops as "CUSTOM:<code>" (Flex ops:
    "CUSTOM:Flex<Op>")."""
    found = {}
    for name, kind, _ in _tflite_operators(model):
        by_type = found.setdefault(name, {})
        by_type[kind] = by_type.get(kind, 0) + 1
    return {name: found[name] for name in sorted(found)}


def check_tflite_ops(op_types):
    """RuntimeError naming the custom or Flex ops of a .tflite model (builtin ops only)."""
    custom = sorted(op for op in op_types if op.startswith("CUSTOM:"))
    if custom:
        raise RuntimeError(f"the LiteRT model uses ops that are not builtin: {custom} (Flex ops need the select-TF-"
                           "ops runtime, which the pip LiteRT interpreter does not have)")


def _unsupported_ops(message):
    """The TensorFlow op names a converter error lists (`'tf.OpName'`)."""
    return sorted(set(re.findall(r"'tf\.([A-Za-z0-9_]+)'", message)))


def convert_tflite(function, trackable, quantize, calibration=None):
    """bytes of the .tflite model of a traced `function` (builtin ops only). calibration: for
    int8, a list of uint8 [1, H, W, 3] inputs."""
    import tensorflow as tf

    def new_converter():
        made = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], trackable)
        made.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return made

    converter = new_converter()
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if not calibration:
            raise ValueError("int8 quantisation needs calibration images")
        return _convert_int8(new_converter, calibration)
    elif quantize != "none":
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    try:
        return converter.convert()
    except Exception as e:  # the converter's ConverterError and friends
        ops = _unsupported_ops(str(e))
        if ops:
            raise RuntimeError(f"LiteRT has no builtin op for {ops} (this export uses builtin ops only)") from None
        raise


# Ops of the RPN and R-CNN stages that stay int8: the convolutions and fully connected layers.
# Their other ops (anchor and box arithmetic, RoI sampling coordinates and bilinear weights, top-k,
# softmax, NMS) and everything outside the detector (preprocessing, outputs) stay float32.
INT8_STAGE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"})
_BOX_SCOPES = ("/rpn/", "/roi_head/")


def float_nodes(model):
    """Names of the ops of a float (or calibrated) .tflite model (bytes) that full-integer
    quantisation keeps in float32: outside the detector's scope, or inside its RPN / R-CNN stages
    and not one of INT8_STAGE_OPS. (An op's name is its first output tensor's.)"""
    names = []
    for kind, _, name in _tflite_operators(model):
        if name is None:
            continue
        in_detector = name.startswith("detector/")
        in_stage = any(scope in name for scope in _BOX_SCOPES)
        if not in_detector or (in_stage and kind not in INT8_STAGE_OPS):
            names.append(name)
    return names


def _convert_int8(new_converter, calibration):
    """Full-integer quantisation with the float parts of float_nodes: calibrate (the float model
    with activation ranges), then the MLIR quantiser with those nodes denylisted."""
    import tensorflow as tf
    from tensorflow.lite.python import convert
    converter = new_converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in calibration)
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # the documented selective-quantisation path (QuantizationDebugger)
    calibrated = converter.convert()
    # the calibrated model is the float model with activation ranges: the same ops and names
    return convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                 denylisted_nodes=float_nodes(calibrated))


# ----------------------------------------------------------------------------- ONNX


def convert_onnx(function, input_size, opset=ONNX_OPSET):
    """The onnx ModelProto of a traced `function`, through tf2onnx."""
    import tensorflow as tf
    try:
        import tf2onnx
    except ImportError:
        raise ImportError("ONNX export needs tf2onnx and onnx: pip install tf2onnx onnx (or lhrcnn[edge])") from None
    spec = [tf.TensorSpec([1, *input_size, 3], tf.uint8, name=edge_runtime.INPUT_NAME)]
    model, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    return model


def onnx_op_types(model):
    """{"domain::op" or "op": count} of an onnx ModelProto's graph and subgraphs."""
    found = {}

    def visit(graph):
        for node in graph.node:
            name = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            found[name] = found.get(name, 0) + 1
            for attribute in node.attribute:
                if attribute.g is not None and len(attribute.g.node):
                    visit(attribute.g)
                for sub in attribute.graphs:
                    visit(sub)

    visit(model.graph)
    return {name: found[name] for name in sorted(found)}


def check_onnx_ops(op_types):
    """RuntimeError naming ops outside the standard ONNX domain."""
    foreign = sorted(op for op in op_types if "::" in op)
    if foreign:
        raise RuntimeError(f"the ONNX model uses ops outside the standard domain: {foreign}")


# ----------------------------------------------------------------------------- calibration


def calibration_canvases(dataset, count, input_size, config, seed=0, model_scale=1.0):
    """`count` training images (a seeded random choice of the dataset's records) letterboxed to
    the input size as edge_runtime.letterbox does for a model whose preprocessing scales by
    `model_scale`, each uint8 [1, H, W, 3]. Images that cannot be read or have more than
    config.max_image_pixels pixels are skipped (with a warning) and the next of the random order
    taken instead; ValueError when none can be read."""
    from PIL import Image
    records = list(dataset.records)
    if not records:
        raise ValueError("the calibration set has no images")
    mean = np.asarray(config.image_mean, np.float64)[::-1]
    canvases = []
    for i in np.random.default_rng(seed).permutation(len(records)):
        if len(canvases) == count:
            break
        try:
            with Image.open(records[i].path) as image:
                if image.width * image.height > config.max_image_pixels:
                    raise OSError(f"{image.width}x{image.height} pixels, more than max_image_pixels "
                                  f"({config.max_image_pixels})")
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as e:
            logging.warning("calibration: skipping image %s: %s", records[i].path, e)
            continue
        canvas, _ = edge_runtime.letterbox(pixels, *input_size, config.eval_image_short_size,
                                           config.eval_image_max_size, mean, model_scale)
        canvases.append(canvas[None])
    if not canvases:
        raise ValueError(f"none of the {len(records)} calibration images can be read")
    return canvases


# ----------------------------------------------------------------------------- the export


_CHILD = """
import json, pickle, sys
from lhrcnn.export import edge
with open(sys.argv[1], "rb") as f:
    job = pickle.load(f)
edge._convert_in_this_process(**job)
"""


def _convert_in_this_process(*, experiment, checkpoint, overrides, fmt, quantize, input_size, category_ids,
                             calibration, output, resize):
    """Builds the detector, converts it, writes the model file and `output`.ops.json."""
    from lhrcnn.detector import load_detector
    from lhrcnn import ops as ops_lib
    detector = load_detector(experiment, checkpoint=checkpoint, **dict(overrides, ops_backend="tf"))
    function = edge_function(detector, input_size, category_ids, resize)
    with ops_lib.float32_twin_arithmetic():  # neither format has float64 arithmetic everywhere (LiteRT)
        if fmt == "tflite":
            model = convert_tflite(function, detector, quantize, calibration)
            ops = tflite_op_types(model)
            check_tflite_ops(ops)
            data = model
        else:
            model = convert_onnx(function, input_size)
            import onnx
            onnx.checker.check_model(model)
            ops = onnx_op_types(model)
            check_onnx_ops(ops)
            data = model.SerializeToString()
    with open(output, "wb") as f:
        f.write(data)
    with open(output + ".ops.json", "w") as f:
        json.dump(ops, f)


def export_edge(experiment, checkpoint, output_dir, *, fmt, quantize="none", input_size=None, overrides=None,
                category_ids, calibration_dataset=None, calibration_images=100, info=None, verify=True,
                resize=True):
    """Writes `output_dir` (model.tflite or model.onnx, label_map.json, export_info.json) and
    returns its path.

    Args:
      experiment, checkpoint: the experiment folder and checkpoint prefix of the detector.
      fmt: "tflite" or "onnx". quantize: QUANTIZATIONS (tflite only; ONNX is float32).
      input_size: (H, W); default: default_input_size.
      overrides: config overrides (ops_backend is forced to "tf": stock ops).
      category_ids: class index -> dataset category id (what detection_classes holds).
      calibration_dataset, calibration_images: int8's training images and how many to use.
      verify: run the written model in its runtime on a test canvas before putting it in place.
      resize: the model resizes its input by the eval rule (see edge_function).
    Raises:
      FileExistsError (output_dir is not empty), ValueError (arguments), RuntimeError (an op the
      format cannot hold, or the converter failed; the message names it).
    """
    from lhrcnn.config import load_config
    overrides = dict(overrides or {})
    config = load_config(experiment, **overrides)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if fmt == "onnx" and quantize != "none":
        raise ValueError("ONNX exports are float32 (--quantize none); quantise with ONNX Runtime's tools if needed")
    input_size = tuple(input_size or default_input_size(config))
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise FileExistsError(f"{output_dir} exists and is not an empty folder; choose another --output")
    calibration = None
    if quantize == "int8":
        if calibration_dataset is None:
            raise ValueError("int8 quantisation needs the experiment's training images (calibration_dataset)")
        calibration = calibration_canvases(calibration_dataset, int(calibration_images), input_size, config,
                                           model_scale=in_model_scale(config, input_size, resize))
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(output_dir)}.tmp-"
    remove_stale_staging(parent, prefix)  # what killed exports left
    staging = make_staging_dir(parent, prefix)
    started = time.time()
    try:
        name = edge_runtime.TFLITE_FILE if fmt == "tflite" else edge_runtime.ONNX_FILE
        model_path = os.path.join(staging, name)
        job = dict(experiment=os.path.abspath(experiment), checkpoint=checkpoint, overrides=overrides, fmt=fmt,
                   quantize=quantize, input_size=input_size, category_ids=[int(c) for c in category_ids],
                   calibration=calibration, output=model_path, resize=bool(resize))
        _run_child(job, staging, f"{fmt} conversion ({quantize})")
        with open(model_path + ".ops.json") as f:
            ops = json.load(f)
        os.remove(model_path + ".ops.json")
        with open(os.path.join(staging, edge_runtime.LABEL_MAP_FILE), "w") as f:
            json.dump({str(k): v for k, v in categories_lib.label_map(config.class_names, category_ids).items()},
                      f, indent=1)
        details = {
            "format": fmt, "quantize": quantize, "input": f"{edge_runtime.INPUT_NAME}: uint8 [1, {input_size[0]}, "
            f"{input_size[1]}, 3] RGB", "input_size": list(input_size), "resize": bool(resize),
            "in_model_scale": in_model_scale(config, input_size, resize),
            "outputs": list(edge_runtime.OUTPUT_NAMES), "ops": ops,
            "float_ops": sorted(op for op, kinds in ops.items() if isinstance(kinds, dict) and "float32" in kinds),
            "int8_ops": sorted(op for op, kinds in ops.items() if isinstance(kinds, dict) and "int8" in kinds),
            "opset": ONNX_OPSET if fmt == "onnx" else None,
            "class_names": list(config.class_names), "category_ids": [int(c) for c in category_ids],
            "eval_image_short_size": config.eval_image_short_size, "eval_image_max_size": config.eval_image_max_size,
            "mean_rgb": [float(v) for v in np.asarray(config.image_mean, np.float64)[::-1]],
            "size_divisor": config.size_divisor, "box_offset": config.box_offset,
            "max_detections": config.test_max_detections, "score_threshold": config.test_score_threshold,
            "calibration_images": len(calibration) if calibration else 0,
            "model_bytes": os.path.getsize(model_path), **(info or {})}
        with open(os.path.join(staging, edge_runtime.INFO_FILE), "w") as f:
            json.dump(details, f, indent=1)
        if verify:
            model = edge_runtime.EdgeModel(model_path)
            out = model.run(np.zeros([1, *input_size, 3], np.uint8))
            missing = sorted(set(edge_runtime.OUTPUT_NAMES) - set(out))
            if missing:
                raise RuntimeError(f"the written {fmt} model lacks outputs {missing}")
        details["export_seconds"] = round(time.time() - started, 1)
        with open(os.path.join(staging, edge_runtime.INFO_FILE), "w") as f:
            json.dump(details, f, indent=1)
        os.chmod(staging, 0o755)
        if os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _run_child(job, staging, what):
    """Runs the conversion in a child Python process: a converter that crashes (a signal) or fails
    becomes a RuntimeError naming `what` and its last error line."""
    import pickle
    job_path = os.path.join(staging, "job.pickle")
    with open(job_path, "wb") as f:
        pickle.dump(job, f)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", _CHILD, job_path], capture_output=True, text=True, env=env)
    os.remove(job_path)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        errors = [l for l in lines if re.match(r"^(\w+\.)*\w*(Error|Exception)\b", l)]
        last = errors[-1] if errors else (lines[-1] if lines else "no output")
        if proc.returncode < 0:
            raise RuntimeError(f"the {what} crashed (signal {-proc.returncode}); last output: {last}")
        raise RuntimeError(f"the {what} failed: {last}")
