"""Registration with anatomical embeddings: matches, robust rigid/affine fits, resampling, deedsBCV.

Modules: :mod:`.robust` (Huber IRLS, rigid and affine fits with RANSAC), :mod:`.matching`
(grid of cycle-consistent embedding matches inside the body), :mod:`.resample` (moving image onto
the fixed grid in world space), :mod:`.deeds` (running deedsBCV and applying its displacement
field on anisotropic grids).
"""
