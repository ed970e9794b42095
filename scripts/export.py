"""Exports a trained detector as a SavedModel version for TF Serving (the same code and flags as
`lhrcnn export`; see lhrcnn/cli.py):

  python scripts/export.py --experiment experiments/lhrcnn/thundernet.snet146.synthetic
                           --output models/lhrcnn [--checkpoint PATH] [--version N] [--ops tf|custom]
                           [--max-detections 100] [--score-threshold S] [--annotations FILE]
                           [--noverify] [--set FIELD=VALUE ...] [--verbose]

Writes <output>/<version>/ (saved_model.pb, variables/, assets.extra/ with the warm-up requests,
label_map.json and export_info.json), atomically; an existing version is never overwritten.
Signatures: serving_default (images uint8 [N, H, W, 3]) and serve_bytes (image_bytes string [N],
JPEG or PNG); outputs detection_boxes (normalised y1, x1, y2, x2), detection_scores,
detection_classes (category ids), num_detections, detection_boxes_pixels (x1, y1, x2, y2).

--ops tf (default) uses stock TensorFlow ops only (any tensorflow_model_server); --ops custom puts
the compiled lhrcnn ops in the graph (a server built with //ops:lhrcnn_ops; see docs/serving.md).
Defaults: the latest checkpoint in output/<user>/<experiment>/model_dump/, the next version, the
config's test_max_detections and test_score_threshold, category ids from --annotations or the
config's eval_annotations (else COCO's ids for COCO's classes, else the class index).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lhrcnn import cli  # noqa: E402

cli.define_absl_flags("export")
main = cli.absl_main("export")

if __name__ == "__main__":
    cli.run_script(main)
