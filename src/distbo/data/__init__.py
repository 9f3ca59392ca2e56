"""Offline datasets (data/sources.py), client partitions (data/partition.py) and the federated
train / validation / test split with batch sampling (data/federated.py)."""
from __future__ import annotations

from .federated import FederatedData, Split
from .partition import parse_partition, partition
from .sources import Source, check_spec, load_source, read_idx

__all__ = ["FederatedData", "Source", "Split", "check_spec", "load_source", "parse_partition",
           "partition", "read_idx"]
