"""TF1 checkpoints -> the detector's variables, through explicit name tables
(docs/original.md#checkpoints, #name-table, #xception-backbone).

Sources this reads (`tf.train.load_checkpoint`, TF V2 `.index`/`.data` or the old V1 single file):
  - the original's `epoch_k.ckpt` of light_head_rcnn.ori_res101.coco[.ps_roialign] (540 model
    tensors) and rfcn_reproduce.ori_res101.coco.baseline (532), with their training state:
    `<name>/Momentum` and `<name>/ExponentialMovingAverage` for every trainable tensor, the
    float32 `global_step` and the learning-rate `Variable`;
  - the slim ImageNet checkpoints resnet_v1_50.ckpt / resnet_v1_101.ckpt (backbone only; their
    `logits` classifier and `global_step` are not used);
  - geonseoks' Xception* naming (scope `resnet_v1_xception`, units with a separable `dws_conv2`).

The table of an experiment is a tuple of `Entry(source, target, trainable)`: `source` is the TF1
name, `target` a path of the built detector, read component by component (a layer name inside
a functional model, an attribute otherwise), so it names the variable by the model's structure
and by the layer names the library sets explicitly, never by Keras' generated suffixes:

| TF1 name (S = resnet_v1_50, resnet_v1_101 or resnet_v1_xception) | detector path |
|---|---|
| `S/conv1/weights`, `S/conv1/BatchNorm/<v>` | `backbone/conv1/kernel`, `backbone/conv1/<v>` |
| `S/block<b>/unit_<u>/bottleneck_v1/<c>/weights` (c = shortcut, conv1, conv2, conv3) | `backbone/block<b>_unit<u>_<c>/kernel` |
| `S/block<b>/unit_<u>/bottleneck_v1/<c>/BatchNorm/<v>` | `backbone/block<b>_unit<u>_<c>/<v>` |
| `S/block<b>/unit_<u>/bottleneck_v1/dws_conv2/{depthwise_weights, pointwise_weights, biases}` | `backbone/block<b>_unit<u>_dws_conv2/{depthwise_kernel, pointwise_kernel, bias}` |
| `S/rpn_conv/3x3`, `S/rpn_cls_score`, `S/rpn_bbox_pred` | `rpn/head/conv`, `rpn/head/cls`, `rpn/head/bbox` |
| `S/conv_new_1_conv15_{w_pre, w, h_pre, h}` | `roi_heads/thin_map/{w_pre, w, h_pre, h}` |
| `S/ps_fc_1`, `S/cls_fc`, `S/bbox_fc` (Light-Head) | `roi_heads/box_head/{fc, cls, bbox}` |
| `S/conv_new_1`, `S/rfcn_cls`, `S/rfcn_bbox` (R-FCN) | `roi_heads/box_head/{conv, cls, bbox}` |

(v = beta, gamma, moving_mean, moving_variance; for the head layers `weights` -> `kernel`,
`biases` -> `bias`.) The head rows come from the built parts' `tf1_layer_names()`. No tensor needs a permutation: lhrcnn keeps the original's NHWC layout, HWIO
kernels, `[in, out]` fully connected weights, the RPN's (anchor, 2 | 4) channel order, the
position-sensitive channel order `(k·G + ph)·G + pw` and the (ph, pw, k) flatten order in
front of `ps_fc_1`, so every tensor copies unchanged (tests/convert/test_convert_tf1.py shows that the
converted detector reproduces the TF1 graph, and that a permuted `ps_fc_1` does not).

Conversion is strict: every variable of the target (the detector, or its backbone for an
ImageNet checkpoint) needs a source tensor of the same shape, and every checkpoint tensor must
be a table name or known training state; anything else is one ValueError listing the names,
raised before any variable is assigned.
"""
import dataclasses
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from lhrcnn.keras import keras
from lhrcnn.paths import make_staging_dir, remove_stale_staging, resolve_checkpoint

# backbone name (Config.backbone) -> the TF1 variable scope of the backbone and of the heads
# (the original's head code re-opens the backbone's scope).
SCOPES = {"resnet_v1_50": "resnet_v1_50", "resnet_v1_101": "resnet_v1_101",
          "xception_star": "resnet_v1_xception"}
# TF1 architecture (docs/original.md#model-variables, #xception-backbone): units per block. Every block's unit_1 changes the depth,
# so it (and only it) has a `shortcut` convolution.
RESNET_UNITS = {"resnet_v1_50": (3, 4, 6, 3), "resnet_v1_101": (3, 4, 23, 3)}
XCEPTION_UNITS = (4, 8, 4)
FROZEN_BLOCKS = 1  # conv1 and block1 convolutions are built with trainable=False in the original

BN_VARIABLES = ("beta", "gamma", "moving_mean", "moving_variance")  # slim BatchNorm/<v> == ConvBN <v>
DENSE_VARIABLES = (("weights", "kernel"), ("biases", "bias"))
SEPARABLE_VARIABLES = (("depthwise_weights", "depthwise_kernel"), ("pointwise_weights", "pointwise_kernel"),
                       ("biases", "bias"))

MOMENTUM_SUFFIX = "/Momentum"
EMA_SUFFIX = "/ExponentialMovingAverage"
STATE_TENSORS = {
    "global_step": "training step (float32 in the original's checkpoints, int64 in slim's)",
    "Variable": "learning rate of the original's trainer",
}
PARTS = ("auto", "detector", "backbone")
WEIGHTS = ("raw", "ema")
CHECKPOINT_NAME = "converted"  # the written checkpoint is <output>/converted-0
REPORT_FILE = "conversion.json"
_LIST_LIMIT = 40


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of a name table: TF1 `source` name -> detector `target` path; `trainable` says
    whether the original trained the tensor (then it has `/Momentum` and EMA shadows)."""
    source: str
    target: str
    trainable: bool


# ----------------------------------------------------------------------------- name tables

def _conv_bn(source, target, trainable):
    """slim conv2d + BatchNorm (no bias) -> a ConvBN layer."""
    yield Entry(f"{source}/weights", f"{target}/kernel", trainable)
    for v in BN_VARIABLES:
        yield Entry(f"{source}/BatchNorm/{v}", f"{target}/{v}", False)


def _dense(source, target, pairs=DENSE_VARIABLES):
    """slim conv2d / fully_connected / separable_conv2d with biases (all trainable)."""
    for tf1_name, keras_name in pairs:
        yield Entry(f"{source}/{tf1_name}", f"{target}/{keras_name}", True)


def backbone_table(backbone):
    """Entries of the backbone `backbone` (a Config.backbone name), targets under `backbone/`."""
    if backbone not in SCOPES:
        raise ValueError(f"no TF1 name table for backbone {backbone!r}; tables exist for {', '.join(sorted(SCOPES))}")
    scope = SCOPES[backbone]
    entries = list(_conv_bn(f"{scope}/conv1", "backbone/conv1", trainable=False))
    separable = backbone == "xception_star"
    units = XCEPTION_UNITS if separable else RESNET_UNITS[backbone]
    for block, num_units in enumerate(units, start=1):
        trainable = block > FROZEN_BLOCKS
        for unit in range(1, num_units + 1):
            source = f"{scope}/block{block}/unit_{unit}/bottleneck_v1"
            target = f"backbone/block{block}_unit{unit}"
            convs = (["shortcut"] if unit == 1 else []) + ["conv1", "conv3"] + ([] if separable else ["conv2"])
            for conv in sorted(convs):
                entries += _conv_bn(f"{source}/{conv}", f"{target}_{conv}", trainable)
            if separable:  # slim separable_conv2d: bias, no BN, trainable even in the frozen block1
                entries += _dense(f"{source}/dws_conv2", f"{target}_dws_conv2", SEPARABLE_VARIABLES)
    return tuple(entries)


def head_table(detector):
    """Entries of the RPN head and the R-CNN stage of the built `detector` (targets under `rpn/`
    and `roi_heads/`), in the backbone's TF1 scope. Each part names its layers' TF1 names
    (`tf1_layer_names()`), so the table is what the builder built; a part without them, or a
    neck, has no counterpart in the original (ValueError naming it)."""
    backbone = detector.config.backbone
    if backbone not in SCOPES:
        raise ValueError(f"no TF1 name table for backbone {backbone!r}; tables exist for {', '.join(sorted(SCOPES))}")
    if detector.neck is not None:
        raise ValueError(f"no TF1 name table for neck {detector.config.neck!r} (the original has no neck)")
    scope = SCOPES[backbone]
    parts = (("rpn/head", detector.rpn.head), ("roi_heads/thin_map", detector.roi_heads.thin_map),
             ("roi_heads/box_head", detector.roi_heads.box_head))
    entries = []
    for path, part in parts:
        if part is None:
            continue
        names = getattr(part, "tf1_layer_names", None)
        if names is None:
            raise ValueError(f"no TF1 name table for {type(part).__name__} at {path} (head {detector.config.head!r}; "
                             "the original's parts: RPNHead, LargeSeparableConv, LightHead, RFCNHead)")
        for attribute, source in names().items():
            entries += _dense(f"{scope}/{source}", f"{path}/{attribute}")
    return tuple(entries)


def detector_table(detector):
    """The whole table of the built `detector`: backbone, RPN head and R-CNN stage."""
    return backbone_table(detector.config.backbone) + head_table(detector)


def resolve(root, path):
    """The variable at `path` ("backbone/block1_unit1_conv1/kernel") of `root`: each component
    names a layer of a functional Keras model or else an attribute."""
    obj = root
    for component in path.split("/"):
        layer_names = {layer.name for layer in obj.layers} if isinstance(obj, keras.Model) else ()
        if component in layer_names:
            obj = obj.get_layer(component)
        elif hasattr(obj, component):
            obj = getattr(obj, component)
        else:
            raise ValueError(f"table path {path!r}: {type(obj).__name__} {getattr(obj, 'name', '')!r} has no layer "
                             f"or attribute {component!r} (the table and the model disagree)")
    if not isinstance(obj, tf.Variable):
        raise ValueError(f"table path {path!r} names a {type(obj).__name__}, not a variable")
    return obj


# ----------------------------------------------------------------------------- checkpoints

def _reader(prefix):
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, tf.errors.InvalidArgumentError, ValueError) as e:
        raise FileNotFoundError(f"cannot read checkpoint {prefix}: {str(e).splitlines()[0]}") from None


def is_tf1_checkpoint(path):
    """True for a name-based (TF1) checkpoint, False for an object-based (TF2) one."""
    shapes = _reader(resolve_checkpoint(path)).get_variable_to_shape_map()
    return "_CHECKPOINTABLE_OBJECT_GRAPH" not in shapes


def _listing(names):
    names = sorted(names)
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f", ... and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else "")


@dataclasses.dataclass
class ConversionReport:
    """What a conversion read: `mapped` (TF1 name read, target path, shape), `skipped`
    (reason -> TF1 names), the number of values loaded."""
    checkpoint: str
    part: str
    weights: str
    mapped: list
    skipped: dict
    parameters: int

    def summary(self):
        lines = [f"converted {self.checkpoint} ({self.part}, {self.weights} weights): {len(self.mapped)} tensors "
                 f"mapped, {self.parameters:,} parameters loaded"]
        skipped = sum(len(v) for v in self.skipped.values())
        lines.append(f"skipped {skipped} tensors:")
        for reason, names in sorted(self.skipped.items()):
            lines.append(f"  {len(names):4d}  {reason}" + (f": {_listing(names)}" if len(names) <= 3 else ""))
        return "\n".join(lines)

    def to_json(self):
        return {"checkpoint": self.checkpoint, "part": self.part, "weights": self.weights,
                "parameters": self.parameters, "mapped": {source: target for source, target, _ in self.mapped},
                "skipped": {k: sorted(v) for k, v in sorted(self.skipped.items())}}


SLOTS = ((MOMENTUM_SUFFIX, "optimizer slots (/Momentum)"),
         (EMA_SUFFIX, "EMA shadows (/ExponentialMovingAverage; --weights ema reads them)"))


def _skip_reason(name, used, known, scope):
    """Why the unread checkpoint tensor `name` is skipped; None when the table does not know it.
    `used`: sources of the table being converted; `known`: of the experiment's whole table."""
    logits = f"{scope}/logits/"
    for suffix, what in SLOTS:
        if name.endswith(suffix):
            base = name[:-len(suffix)]
            return what if base in known or base.startswith(logits) else None
    if name in STATE_TENSORS:
        return STATE_TENSORS[name]
    if name.startswith(logits):
        return "ImageNet classifier (logits), not part of the detector"
    if name in used:
        return "raw weights (EMA shadows used instead)"
    if name in known:
        return "head tensors (backbone-only conversion)"
    return None


def _choose_part(part, shapes, config):
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part != "auto":
        return part
    # The slim ImageNet checkpoints carry the classifier; detector checkpoints never do.
    return "backbone" if f"{SCOPES.get(config.backbone, config.backbone)}/logits/weights" in shapes else "detector"


def plan_conversion(reader, detector, part="auto", weights="raw", checkpoint=""):
    """Checks the checkpoint `reader` against the table of `detector` (built, with its `config`)
    and returns ([(variable, TF1 name)], ConversionReport) without assigning anything.

    part: "detector" (every detector variable), "backbone" (the backbone's variables; the heads
      keep their values) or "auto" (backbone when the checkpoint holds the ImageNet `logits`).
    weights: "raw" or "ema" (each tensor the original trained comes from its
      `/ExponentialMovingAverage` shadow; BN statistics and frozen weights stay raw).
    Raises ValueError listing every model variable without a source, every source of the wrong
    shape and every checkpoint name the table does not know.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    config = detector.config
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    part = _choose_part(part, shapes, config)
    full_table = detector_table(detector)
    table = backbone_table(config.backbone) if part == "backbone" else full_table
    targets = detector.backbone.variables if part == "backbone" else detector.variables

    variables = {}
    for entry in table:
        variable = resolve(detector, entry.target)
        assert variable.ref() not in variables, f"two table entries resolve to {variable.name}"
        variables[variable.ref()] = (entry, variable)
    unmapped = [v.name for v in targets if v.ref() not in variables]

    known = {e.source for e in full_table}
    sources, missing, wrong_shape = [], [], []
    for entry, variable in variables.values():
        name = entry.source + EMA_SUFFIX if weights == "ema" and entry.trainable else entry.source
        if name not in shapes:
            missing.append(name)
            continue
        if tuple(shapes[name]) != tuple(variable.shape) or not dtypes[name].is_floating:
            wrong_shape.append(f"{name} {dtypes[name].name}{list(shapes[name])} (model {entry.target} "
                               f"{list(variable.shape)})")
            continue
        sources.append((variable, name, entry))

    read = {name for _, name, _ in sources}
    used = {e.source for e in table}
    scope = SCOPES[config.backbone]
    skipped, unknown = {}, []
    for name in shapes:
        if name not in read:
            reason = _skip_reason(name, used, known, scope)
            if reason is None:
                unknown.append(name)
            else:
                skipped.setdefault(reason, []).append(name)

    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} model variable(s) have no entry in the TF1 table of backbone "
                        f"{config.backbone!r} / head {config.head!r} (the experiment differs from the original's "
                        f"network): {_listing(unmapped)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) the table needs are not in the checkpoint: {_listing(missing)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) have the wrong shape or dtype: {_listing(wrong_shape)}")
    if unknown:
        problems.append(f"{len(unknown)} checkpoint tensor(s) are unknown to the table of this experiment "
                        f"(scope {scope!r}): {_listing(unknown)}")
    if problems:
        if missing and len(missing) == len(variables):
            scopes = sorted({n.split("/")[0] for n in shapes if "/" in n})
            problems.append(f"none of the needed tensors is there: the checkpoint's scopes are {scopes}, the "
                            f"experiment's backbone {config.backbone!r} expects {scope!r}")
        raise ValueError(f"checkpoint {checkpoint or '(reader)'} does not match the experiment "
                         f"{getattr(config, 'experiment_dir', '')}:\n  - " + "\n  - ".join(problems))
    mapped = [(name, entry.target, list(variable.shape)) for variable, name, entry in sources]
    parameters = int(sum(np.prod(variable.shape) for variable, _, _ in sources))
    report = ConversionReport(checkpoint, part, weights, mapped, skipped, parameters)
    return [(variable, name) for variable, name, _ in sources], report


def load_tf1_checkpoint(detector, path, part="auto", weights="raw"):
    """Assigns a TF1 checkpoint (prefix, V1 file or folder) to `detector` (built) through the
    table of `detector.config`; returns the ConversionReport. Nothing is assigned when the
    checkpoint does not match (ValueError listing the names)."""
    prefix = resolve_checkpoint(path)
    reader = _reader(prefix)
    assignments, report = plan_conversion(reader, detector, part=part, weights=weights, checkpoint=prefix)
    for variable, name in assignments:
        variable.assign(reader.get_tensor(name).astype(variable.dtype.as_numpy_dtype))
    return report


def write_checkpoint(detector, output, report):
    """Writes the converted `detector` (all of it, or only its backbone for a backbone report) as
    a TF2 checkpoint `<output>/converted-0` with a `checkpoint` state file and conversion.json.
    Written to a temporary sibling folder and then renamed, so `output` either does not exist or
    is complete. `output` must not exist or be empty. Returns the checkpoint prefix."""
    output = os.path.abspath(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"output {output} already exists and is not an empty folder; remove it or choose "
                              f"another --output")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(output)}.tmp-"
    remove_stale_staging(parent, prefix)  # what killed conversions left
    temporary = make_staging_dir(parent, prefix)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
        # A backbone-only checkpoint keeps the detector's object path model/backbone/..., so
        # restoring it into a detector (scripts/train.py --init-checkpoint) finds the backbone.
        model = detector if report.part == "detector" else tf.train.Checkpoint(backbone=detector.backbone)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), temporary, max_to_keep=1,
                                             checkpoint_name=CHECKPOINT_NAME)
        manager.save(checkpoint_number=0)
        with open(os.path.join(temporary, REPORT_FILE), "w") as f:
            json.dump(report.to_json(), f, indent=1)
        if os.path.isdir(output):
            os.rmdir(output)  # empty (checked above)
        os.rename(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return os.path.join(output, f"{CHECKPOINT_NAME}-0")


def convert(checkpoint, experiment_dir, output, weights="raw", part="auto"):
    """scripts/convert_tf1.py: builds the experiment's detector, loads the TF1 `checkpoint` into
    it and writes the TF2 checkpoint to `output`. Returns (prefix written, ConversionReport)."""
    from lhrcnn.detector import build_detector
    prefix = resolve_checkpoint(checkpoint)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"output {output} already exists and is not an empty folder; remove it or choose "
                              f"another --output")
    detector = build_detector(experiment_dir)
    report = load_tf1_checkpoint(detector, prefix, part=part, weights=weights)
    return write_checkpoint(detector, output, report), report
