"""segfm: promptable medical segmentation foundation models, trained from YAML."""

__version__ = "0.1.0"
