"""Thin Lightning callbacks: diagnostics (SDR, stretch probe) and image grids, rank zero only."""

from icm.callbacks.diagnostics import Diagnostics
from icm.callbacks.images import ImageGrids
from icm.callbacks.records import append_record, read_records, truncate_records

__all__ = ["Diagnostics", "ImageGrids", "append_record", "read_records", "truncate_records"]
