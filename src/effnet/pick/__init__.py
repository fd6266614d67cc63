"""``effnet pick``: the most accurate variant and runtime within a latency budget, measured here.

:func:`pick` measures candidates (:mod:`effnet.pick.search`) against a reference on this
machine; :mod:`effnet.pick.report` prints and writes the table and the plot.
"""

from .search import PickResult, PickRow, PickSettings, pick

__all__ = ["PickResult", "PickRow", "PickSettings", "pick"]
