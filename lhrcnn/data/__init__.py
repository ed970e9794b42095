"""Datasets and the input pipeline: COCO json, odgt and the synthetic generator all produce one
record type (records.py); pipeline.py turns it into a tf.data pipeline of padded batches, with
the image preprocessing of preprocess.py (which inference and serving use too).

The loaders import no TensorFlow; the pipeline names are imported on first use.
"""
from lhrcnn.data.coco import load_coco
from lhrcnn.data.odgt import load_odgt
from lhrcnn.data.records import DetectionDataset, ImageRecord

_PIPELINE_NAMES = ("make_dataset", "PipelineStats", "resized_shape")

__all__ = ["load_coco", "load_odgt", "DetectionDataset", "ImageRecord", *_PIPELINE_NAMES]


def __getattr__(name):
    if name in _PIPELINE_NAMES:
        from lhrcnn.data import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
