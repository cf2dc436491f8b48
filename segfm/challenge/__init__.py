"""CVPR 2025 challenge submissions: the build context, the entry point and the local loop.

- :mod:`.bundle`: ``segfm export --format challenge`` writes a folder with the weights, the
  resolved config, ``predict.sh`` and a Dockerfile; :func:`~.bundle.load_method` reads it back.
- :mod:`.inputs`: one input npz of the challenge, read and checked; the output written.
- :mod:`.entry`: ``segfm challenge-predict``, what ``predict.sh`` runs for each step.
- :mod:`.driver`: ``segfm challenge-eval``, the official evaluation loops run locally.
"""
