"""Complexity of a built Keras model: multiply-adds (what the detection papers call FLOPs) and
parameters, counted on the TensorFlow graph of one forward pass at a fixed input size.

Counted: every Conv2D (k_h·k_w·C_in per output element; a dilated convolution runs as
space-to-batch + Conv2D and is counted there), DepthwiseConv2dNative (k_h·k_w per output
element), MatMul / BatchMatMul (M·N·K), Einsum (the product of all its index sizes). Not counted, as in the papers: BatchNorm (folded or elementwise),
biases, activations, pooling (RoI pooling included), resizing, additions, NMS and box decoding.
Ops inside nested functions (tf.cond branches, loops: counted once) are included.
"""
import collections

import numpy as np
import tensorflow as tf

MAC_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum")


def _static(shape):
    dims = shape.as_list() if shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        return None
    return dims


def _op_macs(op):
    kind = op.type
    if kind == "Conv2D":
        out, kernel = _static(op.outputs[0].shape), _static(op.inputs[1].shape)
        if out is None or kernel is None:
            return None
        return int(np.prod(out)) * kernel[0] * kernel[1] * kernel[2]
    if kind == "DepthwiseConv2dNative":
        out, kernel = _static(op.outputs[0].shape), _static(op.inputs[1].shape)
        if out is None or kernel is None:
            return None
        return int(np.prod(out)) * kernel[0] * kernel[1]
    if kind == "MatMul":
        a, out = _static(op.inputs[0].shape), _static(op.outputs[0].shape)
        if a is None or out is None:
            return None
        k = a[0] if op.get_attr("transpose_a") else a[1]
        return out[0] * out[1] * k
    if kind == "Einsum":  # a contraction: one multiply-add per combination of all its indices
        equation = op.get_attr("equation").decode()
        sizes = {}
        for term, tensor in zip(equation.split("->")[0].split(","), op.inputs):
            shape = _static(tensor.shape)
            if shape is None or "." in term:
                return None
            sizes.update(zip(term, shape))
        return int(np.prod([sizes[i] for i in sizes]))
    if kind.startswith("BatchMatMul"):
        a, out = _static(op.inputs[0].shape), _static(op.outputs[0].shape)
        if a is None or out is None:
            return None
        k = a[-2] if op.get_attr("adj_x") else a[-1]
        return int(np.prod(out)) * k
    return 0


def _walk(graph, counts, unknown, seen):
    for op in graph.get_operations():
        if op.type in MAC_OPS:
            macs = _op_macs(op)
            if macs is None:
                unknown.append(op.name)
            else:
                counts[op.type] += macs
        for attr in ("f", "then_branch", "else_branch", "body", "cond"):
            try:
                fn = op.get_attr(attr)
            except (ValueError, TypeError):
                continue
            name = getattr(fn, "name", None)
            if name and name not in seen and name in graph._functions:
                seen.add(name)
                _walk(graph._functions[name].graph, counts, unknown, seen)


def count_macs(fn, *example_inputs):
    """Multiply-adds of one call of `fn` (a Keras model or a function of tensors) on inputs of
    the given static shapes. Returns (total, {op type: macs}, [ops whose shapes were unknown])."""
    concrete = tf.function(fn, autograph=False).get_concrete_function(*example_inputs)
    counts, unknown = collections.Counter(), []
    _walk(concrete.graph, counts, unknown, set())
    return int(sum(counts.values())), dict(counts), unknown


def count_parameters(model):
    """(all parameters, trainable parameters) of a Keras model."""
    total = int(sum(np.prod(v.shape) for v in model.variables))
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return total, trainable


def backbone_complexity(name, height=224, width=224, for_classification=True):
    """MACs and parameters of a backbone at an input size (default: the ImageNet form at 224x224)."""
    from lhrcnn.backbones import build_backbone
    model = build_backbone(name, for_classification=for_classification)
    macs, by_op, unknown = count_macs(lambda images: model(images, training=False),
                                      tf.TensorSpec([1, height, width, 3], tf.float32))
    total, trainable = count_parameters(model)
    return {"name": name, "input": f"{height}x{width}", "macs": macs, "by_op": by_op, "unknown": unknown,
            "parameters": total, "trainable_parameters": trainable}


def detector_complexity(experiment, height=None, width=None, **config_overrides):
    """MACs and parameters of an experiment's whole detector in inference (its test-time proposals
    feed the R-CNN head) at an input size (default: the eval short side, square), with optional
    config overrides."""
    from lhrcnn.detector import build_detector
    detector = build_detector(experiment, **config_overrides)
    c = detector.config
    height = height or c.eval_image_short_size
    width = width or c.eval_image_short_size
    info = tf.constant([[height, width, 1.0, height, width]], tf.float32)
    macs, by_op, unknown = count_macs(
        lambda images: detector({"images": images, "image_info": info}, training=False),
        tf.TensorSpec([1, height, width, 3], tf.float32))
    backbone, _, _ = count_macs(lambda images: detector.backbone(images, training=False),
                                tf.TensorSpec([1, height, width, 3], tf.float32))
    total, trainable = count_parameters(detector)
    return {"name": c.experiment_name or experiment.rstrip("/").rsplit("/", 1)[-1], "input": f"{height}x{width}",
            "macs": macs, "backbone_macs": backbone, "by_op": by_op, "unknown": unknown,
            "parameters": total, "trainable_parameters": trainable,
            "rois": int(c.test_rpn_post_nms_top_n)}
