"""Export of a detector as a version folder for TF Serving: <base>/<version>/ holds saved_model.pb,
variables/ and assets.extra/ (tf_serving_warmup_requests, label_map.json, export_info.json).

The folder is written under a temporary name in <base> and renamed into place when complete, so a
server watching <base> never sees half an export; an existing version is never overwritten. The
ops of the written graph are checked: a stock-op export ("tf") holds no lhrcnn op and no op that
only runs inside Python, so a stock tensorflow_model_server loads it."""
import json
import logging
import os
import re
import shutil
import time

import tensorflow as tf

from lhrcnn.export import categories, serving, warmup
from lhrcnn.paths import make_staging_dir, remove_stale_staging

CUSTOM_OP_PREFIX = "Lhrcnn"  # every op of lhrcnn/_lhrcnn_ops.so (ops/kernels/*: REGISTER_OP("Lhrcnn..."))
PYTHON_ONLY_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})  # need a Python interpreter
LABEL_MAP_FILE = "label_map.json"
INFO_FILE = "export_info.json"
_VERSION = re.compile(r"^[0-9]+$")


def existing_versions(base_dir):
    """The integer version folders of `base_dir` (none when it does not exist), ascending."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir)
                  if _VERSION.match(name) and os.path.isdir(os.path.join(base_dir, name)))


def next_version(base_dir):
    """1 + the largest existing version, or 1."""
    versions = existing_versions(base_dir)
    return versions[-1] + 1 if versions else 1


def graph_op_types(saved_model_dir):
    """{op type: count} over every node of every graph and function of a SavedModel."""
    from tensorflow.core.protobuf import saved_model_pb2
    path = os.path.join(saved_model_dir, "saved_model.pb")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    counts = {}
    for meta_graph in model.meta_graphs:
        nodes = list(meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            nodes.extend(function.node_def)
        for node in nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def check_graph_ops(op_types, ops_backend):
    """The lhrcnn ops among `op_types` (sorted); RuntimeError when a stock-op export holds one, or
    when the graph needs Python."""
    python_only = sorted(PYTHON_ONLY_OPS & set(op_types))
    if python_only:
        raise RuntimeError(f"the serving graph contains {python_only}, which run only inside a Python process "
                           "(tf.py_function / tf.numpy_function); a model server cannot run them")
    custom = sorted(op for op in op_types if op.startswith(CUSTOM_OP_PREFIX))
    if ops_backend == "tf" and custom:
        raise RuntimeError(f"the stock-op export contains lhrcnn ops {custom}: some layer does not follow "
                           "config.ops_backend")
    return custom


def _validate_outputs(outputs, batch, max_detections, what):
    missing = set(serving.OUTPUT_NAMES) ^ set(outputs)
    if missing:
        raise RuntimeError(f"{what}: outputs {sorted(outputs)} differ from {list(serving.OUTPUT_NAMES)}")
    for name in serving.OUTPUT_NAMES:
        expected = [batch] if name == "num_detections" else [batch, max_detections]
        expected += [4] if name.startswith("detection_boxes") else []
        if list(outputs[name].shape) != expected:
            raise RuntimeError(f"{what}: output {name} has shape {list(outputs[name].shape)}, expected {expected}")


def replay_warmup(saved_model_dir, max_detections):
    """Loads a SavedModel and runs its warm-up requests through their signatures, checking the
    output names and shapes. Returns the number of requests run."""
    loaded = tf.saved_model.load(saved_model_dir)
    logs = warmup.read_warmup_file(os.path.join(saved_model_dir, warmup.WARMUP_DIR, warmup.WARMUP_FILE))
    for log in logs:
        request = log.predict_log.request
        signature = request.model_spec.signature_name or serving.DEFAULT_SIGNATURE
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[signature](**inputs)
        batch = int(next(iter(inputs.values())).shape[0])
        _validate_outputs(outputs, batch, max_detections, f"warm-up request of {signature}")
    return len(logs)


def export_saved_model(detector, base_dir, *, category_ids, version=None, model_name=None, verify=True,
                       info=None):
    """Writes <base_dir>/<version>/ for TF Serving and returns its path.

    Args:
      detector: a TwoStageDetector (weights loaded) whose config.ops_backend is "tf" (stock ops
        only: any tensorflow_model_server) or "custom" (the compiled ops: a server built with
        //ops:lhrcnn_ops). Its config's eval sizes, test_max_detections and
        test_score_threshold are baked into the graph.
      base_dir: the model's base folder (the server's model_base_path); created if missing.
      category_ids: class index -> the dataset's category id (see categories.resolve_category_ids).
      version: the version folder's number; default: one more than the largest present.
      model_name: the model name in the warm-up requests (default: base_dir's name).
      verify: load the written model and run its warm-up requests before putting it in place.
      info: extra entries for assets.extra/export_info.json (e.g. experiment, checkpoint).
    Raises:
      ValueError: bad version or ops backend. FileExistsError: the version exists already.
    """
    config = detector.config
    backend = config.ops_backend
    if backend not in ("tf", "custom"):
        raise ValueError(f"export needs the detector built with ops_backend 'tf' or 'custom', got {backend!r}")
    base_dir = os.path.abspath(base_dir)
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ValueError(f"export folder {base_dir} exists and is not a folder")
    if version is None:
        version = next_version(base_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists already; refusing to overwrite a version (pick another --version)")
    model_name = model_name or os.path.basename(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    remove_stale_staging(base_dir, ".tmp-")  # what killed exports left
    tmp = make_staging_dir(base_dir, f".tmp-{version}-")  # not a number: servers ignore it
    try:
        started = time.time()
        module = serving.ServingModule(detector, category_ids)
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        op_types = graph_op_types(tmp)
        custom_ops = check_graph_ops(op_types, backend)
        if backend == "custom" and not custom_ops:
            logging.warning("the custom-op export contains no lhrcnn op; it is a stock-op export")
        extra = os.path.join(tmp, warmup.WARMUP_DIR)
        os.makedirs(extra, exist_ok=True)
        warmup.write_warmup_file(os.path.join(extra, warmup.WARMUP_FILE),
                                 warmup.warmup_requests(config, model_name))
        with open(os.path.join(extra, LABEL_MAP_FILE), "w") as f:
            json.dump({str(k): v for k, v in categories.label_map(config.class_names, category_ids).items()},
                      f, indent=1)
        details = {
            "version": version, "model_name": model_name, "ops": backend, "lhrcnn_ops_in_graph": custom_ops,
            "tensorflow": tf.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "signatures": {serving.DEFAULT_SIGNATURE: {serving.IMAGES_INPUT: "uint8 [N, H, W, 3]"},
                           serving.BYTES_SIGNATURE: {serving.BYTES_INPUT: "string [N]"}},
            "outputs": list(serving.OUTPUT_NAMES), "class_names": list(config.class_names),
            "category_ids": [int(c) for c in category_ids],
            "eval_image_short_size": config.eval_image_short_size,
            "eval_image_max_size": config.eval_image_max_size, "size_divisor": config.size_divisor,
            "max_detections": config.test_max_detections, "score_threshold": config.test_score_threshold,
            "max_image_pixels": int(config.max_image_pixels), **(info or {})}
        if verify:
            details["warmup_requests_verified"] = replay_warmup(tmp, int(config.test_max_detections))
        details["export_seconds"] = round(time.time() - started, 1)
        with open(os.path.join(extra, INFO_FILE), "w") as f:
            json.dump(details, f, indent=1)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the model from a server running as another user
        if os.path.exists(final):  # another export took the number meanwhile
            raise FileExistsError(f"{final} appeared while exporting; refusing to overwrite it")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
