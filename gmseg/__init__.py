"""gmseg: learning to annotate part segmentation with gradient matching (JAX).

Importing `gmseg` is cheap: submodules (models, data, launch programs) are
imported where they are used.
"""
__version__ = "0.1.0"
