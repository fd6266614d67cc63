"""``effnet pick``: the most accurate variant and runtime within a latency budget, measured here.

:func:`pick` measures candidates (:mod:`effnet.pick.search`) against a reference on this
machine, keeping what it measured (:mod:`effnet.pick.cache`); :mod:`effnet.pick.report`
prints and writes the table, the JSON and the plot.
"""

from .cache import Candidate, Measurement
from .search import PickResult, PickRow, PickSettings, pick

__all__ = ["Candidate", "Measurement", "PickResult", "PickRow", "PickSettings", "pick"]
