"""ThunderNet with SNet49 on COCO: thundernet.snet146.coco's recipe with the SNet49 backbone
(shared/reference/seed_models.md §2). Paper: 19.1 AP on COCO test-dev, 262 MFLOPs."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_lhrcnn_thundernet_snet146_coco_config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "thundernet.snet146.coco", "config.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


class ExperimentConfig(_base.ExperimentConfig):
    backbone = "snet49"
