"""ThunderNet with SNet535 on COCO: thundernet.snet146.coco's recipe with the SNet535 backbone
(docs/models.md#thundernet). Paper: 28.0 AP on COCO test-dev, about 1.3 GFLOPs."""
from lhrcnn.config import base_experiment_config

_Base = base_experiment_config(__file__, "thundernet.snet146.coco")


class ExperimentConfig(_Base):
    backbone = "snet535"
