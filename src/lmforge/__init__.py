"""lmforge: a hackable PyTorch toolkit for the whole life of a transformer language model.

The public Python API re-exports the pieces most people start from; every module underneath is
meant to be read top to bottom.
"""

__version__ = "0.1.0"
