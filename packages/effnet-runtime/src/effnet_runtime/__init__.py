"""effnet-runtime: run models shipped by effnet without PyTorch.

:mod:`effnet_runtime.portable` holds effnet's image decoding, eval preprocessing and prediction
record in numpy + Pillow (a shipped folder's ``predict.py`` carries a copy of it). Nothing here
imports torch or effnet.
"""

__version__ = "0.1.0"
