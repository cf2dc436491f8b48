"""Inference algorithms over a network and prompts, used by methods, harness and entry point."""
