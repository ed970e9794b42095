"""The main job (`make demo`): synthetic data -> train the default experiment -> COCO mAP ->
export. The detector and trainer arrive with issues #3 and #4; until then this prints the plan
and checks what already exists (the custom ops)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLAN = """lhrcnn main job (make demo)
  1. scripts/make_synthetic_dataset.py  -> data/synthetic/{train,val}   (issue #4)
  2. scripts/train.py --experiment experiments/lhrcnn/light_head_rcnn.xception_star.synthetic   (issues #3, #4)
  3. scripts/test.py  (COCO mAP on the synthetic val set)                 (issue #4)
  4. scripts/export.py (SavedModel for TF Serving)                        (issue #6)
Not implemented yet: the detector and the trainer land with issues #3 and #4."""


def main():
    print(PLAN)
    from lhrcnn import ops
    status = "loaded" if ops.custom_ops_available() else f"NOT available ({ops.custom_ops_load_error()})"
    print(f"custom ops library: {status}")


if __name__ == "__main__":
    main()
