"""High-throughput screening of molecule libraries (``tensornet-fast screen``).

Needs, beyond torch: rdkit (SDF, SMILES), ase (element table, extended XYZ), tqdm (progress bar),
pyarrow (Parquet output) and dask[distributed] (scale-out) -- each imported only when used.
"""

from .readers import Record, iter_raw, parse_record
from .runner import ScreenSpec, ScreenStats, get_model, process_shard, screen
from .writer import read_results

__all__ = [
    "Record",
    "ScreenSpec",
    "ScreenStats",
    "get_model",
    "iter_raw",
    "parse_record",
    "process_shard",
    "read_results",
    "screen",
]
