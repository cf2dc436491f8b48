"""Pure functions on arrays and tensors: intensity normalisations, resizing, the 2.5D encoding."""
