"""Readers and writers of file formats (numpy, nibabel; no torch models, no Lightning)."""
