"""ThunderNet with SNet49 on COCO: thundernet.snet146.coco's recipe with the SNet49 backbone
(docs/models.md#thundernet). Paper: 19.1 AP on COCO test-dev, 262 MFLOPs."""
from lhrcnn.config import base_experiment_config

_Base = base_experiment_config(__file__, "thundernet.snet146.coco")


class ExperimentConfig(_Base):
    backbone = "snet49"
