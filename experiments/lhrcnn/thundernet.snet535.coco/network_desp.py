"""ThunderNet (shared/reference/seed_models.md §2): SNet backbone; Context Enhancement Module on
C4, C5 and the global pool of C5 (245 channels); compressed RPN (5x5 depthwise + 1x1 256) on the
CEM map with 25 anchors; Spatial Attention Module (the RPN feature reweights the CEM map) as
the thin map; PS-RoI-Align with 5 channels per bin (7 x 7 x 5 = 245); one fc 1024."""
from lhrcnn.builders import build_thundernet


def build_network(config):
    return build_thundernet(config)
