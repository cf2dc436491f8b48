"""Prompt construction and click simulation (boxes, points) from masks."""

from segfm.prompts.boxes import (
    expand_boxes,
    jitter_boxes,
    mask_box,
    masks_to_boxes,
    volume_boxes,
)
from segfm.prompts.clicks import (
    Clicks,
    center_error_click,
    largest_error_component,
    sample_error_clicks,
)
from segfm.prompts.points import sample_points

__all__ = [
    "Clicks",
    "center_error_click",
    "expand_boxes",
    "jitter_boxes",
    "largest_error_component",
    "mask_box",
    "masks_to_boxes",
    "sample_error_clicks",
    "sample_points",
    "volume_boxes",
]
