"""``effnet ship``: a checkpoint to a verified, self-contained deployment folder.

:func:`ship` builds the target (:mod:`effnet.ship.plan`), checks it in its own runtime against
the fp32 model, and writes the folder with its report (:mod:`effnet.ship.report`) and a
standalone ``predict.py``.
"""

from .build import ship
from .plan import REMEDIES, TARGETS, ShipOptions, ShipRefused, ShipResult, Target, target

__all__ = ["REMEDIES", "TARGETS", "ShipOptions", "ShipRefused", "ShipResult", "Target", "ship", "target"]
