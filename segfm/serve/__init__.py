"""``segfm serve``: a promptable model behind the SlicerNNInteractive HTTP interface and a page.

:mod:`~segfm.serve.session` holds the image and the target being segmented,
:mod:`~segfm.serve.app` the routes, :mod:`~segfm.serve.codec` the protocol's bytes and
:mod:`~segfm.serve.volumes` the files the page loads and the mask it downloads; the page itself
is ``static/``. FastAPI and uvicorn come with the ``serve`` extra.
"""
