"""Data sets as arrays shaped ``[N, T, F]``: one module per data set.

Every loader returns a ``Dataset``; the training loop keeps it on the device
and indexes batches there, so no data loader runs per step.
"""

from snnexp.data.dataset import Dataset

__all__ = ["Dataset"]
