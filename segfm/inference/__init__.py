"""Inference algorithms, once each, as functions of a network and prompts.

Methods, the evaluation harness and the challenge entry point call them; nothing here knows a
LightningModule. Import the module you need (``segfm.inference.slices``, ...): this package
re-exports nothing, so each algorithm stays one file with its own imports.
"""
