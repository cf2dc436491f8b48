"""Prompt construction and click simulation (boxes, points) from masks."""

from segfm.prompts.boxes import expand_boxes, jitter_boxes, masks_to_boxes, volume_boxes

__all__ = ["expand_boxes", "jitter_boxes", "masks_to_boxes", "volume_boxes"]
