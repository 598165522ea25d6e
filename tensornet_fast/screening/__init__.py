"""Batch evaluation of structure files: the one pipeline behind ``tensornet-fast screen`` and
``tensornet-fast energies`` (readers, batching, writer, runner; docs/cli.md is the contract).

Command line::

    tensornet-fast screen lib.sdf more.xyz cands.smi --model model.ckpt --out hits.csv
    tensornet-fast screen ... --out hits.parquet --relax --fmax 0.05      # Parquet dataset dir
    tensornet-fast screen ... --device cuda --devices all                 # one process per GPU
    tensornet-fast screen ... --workers 8                                 # Dask LocalCluster
    tensornet-fast screen ... --device cuda --scheduler tcp://head:8786   # existing cluster
    tensornet-fast energies cells.extxyz POSCAR --stress --out e.csv      # periodic cells too

Re-running a command resumes it: ids (``file:record``) already in ``--out`` are skipped. A bad
record gets a row whose ``status`` says why; the run goes on. Columns carry their units
(``energy_eV``, ``fmax_eV_per_A``, ...). Python::

    from tensornet_fast.screening import ScreenSpec, screen, read_results
    stats = screen(["lib.sdf"], "hits.csv", ScreenSpec(model="default", relax=True))
    rows = read_results("hits.csv")

On a Slurm/PBS cluster start the workers with dask-jobqueue (one GPU per worker, e.g.
``SLURMCluster(..., job_extra_directives=["--gres=gpu:1"])``) and pass its
``scheduler_address`` as ``--scheduler``; scripts that start clusters or ``--devices`` pools
from Python need the usual ``if __name__ == "__main__":`` guard (worker processes are spawned).

Needs, beyond torch and numpy (plain XYZ needs nothing more): rdkit (SDF, SMILES), ase
(extended XYZ with cells, other formats), tqdm (progress bar), pyarrow (Parquet output) and
dask[distributed] (scale-out), each imported only when used.
"""

from .progress import ScreenStats
from .readers import Record, iter_raw, parse_record
from .runner import screen
from .worker import ScreenSpec, get_model, process_shard
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
