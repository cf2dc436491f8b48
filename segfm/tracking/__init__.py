"""Tracking and registration with anatomical embeddings, one part above evaluation.

Modules: :mod:`.matching` (nearest-neighbour and fixed-point matching of points between two
embedded volumes), :mod:`.dlt` (the DeepLesion tracking pairs file and its metrics),
:mod:`.lesions` (tracking every pair of a pairs file, the library behind ``segfm track``),
:mod:`.robust` (Huber IRLS, rigid and affine fits with RANSAC), :mod:`.grid_matches` (grid of
cycle-consistent embedding matches inside the body), :mod:`.resample` (moving image onto the fixed
grid in world space), :mod:`.deeds` (running deedsBCV and applying its displacement field on
anisotropic grids), :mod:`.registration` (the registration pipeline over an ``embed`` callable)
and :mod:`.register_files` (NIfTI files in, moved images and transform out, the library behind
``segfm register``).

This package may import :mod:`segfm.evaluation`; evaluation never imports it.
"""
