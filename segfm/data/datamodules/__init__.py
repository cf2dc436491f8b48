"""One data module per on-disk format; :mod:`segfm.data` lists them (its ``_MODULES``)."""
