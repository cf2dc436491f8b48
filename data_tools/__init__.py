"""Offline converters and generators; each runs as ``python -m data_tools.<tool> --help``."""
