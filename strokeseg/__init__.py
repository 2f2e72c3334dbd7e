"""strokeseg: tri-planar stroke-lesion segmentation on ATLAS v2.0 or a synthetic ATLAS-like cohort."""
__version__ = "0.1.0"
