"""Loads an exported SavedModel in a process that never imports lhrcnn nor loads its op library
(run by tests/export/test_export.py as `python tests/support/saved_model_check.py ...`), as a stock TensorFlow or
model server would:

  1. walks every node of every graph and function in saved_model.pb and looks each op type up in
     this process's op registry (stock TensorFlow, plus the library when --load-library ran);
  2. loads the model (with --expect-load-failure: first without the library, recording the error,
     then after tf.load_op_library);
  3. runs serving_default on --inputs' `images` and serve_bytes on its `image_bytes`;
  4. writes the outputs (<signature>/<output> arrays) to --outputs and a json report beside it.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PYTHON_ONLY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def graph_ops(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2
    model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    ops = set()
    functions = 0
    for meta_graph in model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            functions += 1
            ops.update(node.op for node in function.node_def)
    return ops, functions


def unregistered(ops):
    from tensorflow.python.framework import op_def_registry
    return sorted(op for op in ops if op_def_registry.get(op) is None)


def library_mapped():
    """True when an lhrcnn op library is mapped into this process."""
    with open("/proc/self/maps") as f:
        return "_lhrcnn_ops" in f.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--saved-model", required=True)
    parser.add_argument("--inputs", required=True, help="npz with images (uint8 [N, H, W, 3]) and image_bytes")
    parser.add_argument("--outputs", required=True)
    parser.add_argument("--load-library", help="op library to load (after a first load attempt without it)")
    parser.add_argument("--expect-load-failure", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    report = {}
    ops, functions = graph_ops(args.saved_model)
    report.update(op_types=sorted(ops), functions=functions, unregistered_before_library=unregistered(ops),
                  python_only=sorted(ops & PYTHON_ONLY_OPS))
    if args.expect_load_failure:
        try:
            tf.saved_model.load(args.saved_model)
            report["load_error"] = None
        except Exception as e:  # noqa: BLE001  (the point is to see what a plain load raises)
            report["load_error"] = f"{type(e).__name__}: {e}"
    if args.load_library:
        tf.load_op_library(args.load_library)
    report["unregistered"] = unregistered(ops)
    loaded = tf.saved_model.load(args.saved_model)
    report["signatures"] = {name: {"inputs": sorted(fn.structured_input_signature[1]),
                                   "outputs": sorted(fn.structured_outputs)}
                            for name, fn in loaded.signatures.items()}
    data = np.load(args.inputs, allow_pickle=True)
    results = {}
    for signature, key in (("serving_default", "images"), ("serve_bytes", "image_bytes")):
        if key not in data:
            continue
        value = data[key]
        tensor = tf.constant(list(value), tf.string) if key == "image_bytes" else tf.constant(value)
        outputs = loaded.signatures[signature](**{key: tensor})
        results.update({f"{signature}/{name}": v.numpy() for name, v in outputs.items()})
    np.savez(args.outputs, **results)
    report["lhrcnn_modules"] = sorted(m for m in sys.modules if m == "lhrcnn" or m.startswith("lhrcnn."))
    report["library_mapped"] = library_mapped()
    with open(args.outputs + ".json", "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
