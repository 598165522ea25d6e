"""Screening throughput (molecules/s): ``tensornet-fast screen`` end to end and the model alone.

The library is synthetic but drug-like: a few dozen drug molecules (C, H, N, O, F, S, Cl; 13-64
atoms with hydrogens, mean ~35) embedded with RDKit ETKDG, replicated with random rotations,
translations and 0.05 A jitter into an XYZ file of ``--n`` molecules, plus a SMILES file for the
conformer-generation path. Modes (``mode`` column; molecules/s in ``notes``):

* ``xyz-e2e``     read XYZ -> validate -> batch -> energy+forces -> CSV, one process
* ``model-only``  the same batches, pre-built tensors, the model call alone (upper bound)
* ``smiles-e2e``  SMILES -> ETKDG 3D conformer (+H) -> energy+forces -> CSV (RDKit bound)
* ``xyz-relax``   ``--relax`` (batched FIRE, fmax 0.05, <= 50 steps), molecules/s relaxed
* ``xyz-dask2``   ``--workers 2`` (LocalCluster on 127.0.0.1), end to end (not with --tiny)

Usage: ``python -m bench.bench_screen [--tiny] [--csv PATH] [--device cpu|cuda] [--n N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

from bench.harness import RESULTS_CSV, append_rows, environment, time_call

DRUGS = [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "CC(=O)Nc1ccc(O)cc1",  # paracetamol
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",  # ibuprofen
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # caffeine
    "CN1CCC[C@H]1c1cccnc1",  # nicotine
    "COc1ccc2[nH]cc(CCNC(C)=O)c2c1",  # melatonin
    "CN(C)CCCN1c2ccccc2CCc2ccccc21",  # imipramine
    "O=C(O)Cc1ccccc1Nc1c(Cl)cccc1Cl",  # diclofenac
    "CC(C)NCC(O)COc1cccc2ccccc12",  # propranolol
    "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc21",  # diazepam
    "Clc1ccc(C(c2ccccc2)n2ccnc2)cc1",  # clotrimazole-like
    "CS(=O)(=O)c1ccc(C2=C(c3ccccc3)C(=O)OC2)cc1",  # rofecoxib
    "Cc1ccc(S(=O)(=O)NC(=O)NN2CCCCCC2)cc1",  # tolazamide
    "OC(=O)c1cc(N=Nc2ccc(O)c(C(=O)O)c2)ccc1O",  # olsalazine
    "CCOC(=O)C1=C(C)NC(C)=C(C(=O)OC)C1c1cccc([N+](=O)[O-])c1",  # nitrendipine
    "FC(F)(F)c1ccc(OC(CCNC)c2ccccc2)cc1",  # fluoxetine
    "CC12CCC3c4ccc(O)cc4CCC3C1CCC2O",  # estradiol
    "NC(=O)c1cccnc1",  # nicotinamide
    "OCC1OC(O)C(O)C(O)C1O",  # glucose
    "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1",  # salbutamol
    "COc1cc(C=O)ccc1O",  # vanillin
    "CN1CCN(C2=Nc3ccccc3Nc3ccc(Cl)cc32)CC1",  # clozapine
    "O=C1CN=C(c2ccccc2F)c2cc(Cl)ccc2N1",  # fludiazepam-like
    "CC(=O)OCC(=O)C1(O)CCC2C3CCC4=CC(=O)CCC4(C)C3C(O)CC21C",  # hydrocortisone acetate
]


def make_library(directory: str, n: int, n_smiles: int, seed: int = 0) -> tuple[str, str, int]:
    """Write ``lib.xyz`` (n molecules) and ``lib.smi`` (n_smiles lines); returns paths, atoms."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    confs = []
    for k, smi in enumerate(DRUGS):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        params = AllChem.ETKDGv3()
        params.randomSeed = k
        if AllChem.EmbedMolecule(mol, params) == 0:
            confs.append(
                (
                    np.array([a.GetSymbol() for a in mol.GetAtoms()]),
                    mol.GetConformer().GetPositions(),
                )
            )
    rng = np.random.default_rng(seed)
    xyz = os.path.join(directory, "lib.xyz")
    total = 0
    with open(xyz, "w") as fh:
        for i in range(n):
            sym, pos = confs[i % len(confs)]
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            p = pos @ q.T + rng.normal(size=3) * 5 + rng.normal(scale=0.05, size=pos.shape)
            lines = [f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(sym, p)]
            fh.write(f"{len(sym)}\nmol{i}\n" + "\n".join(lines) + "\n")
            total += len(sym)
    smi = os.path.join(directory, "lib.smi")
    with open(smi, "w") as fh:
        for i in range(n_smiles):
            fh.write(f"{DRUGS[i % len(DRUGS)]} drug{i}\n")
    return xyz, smi, total


def _screen_rate(inputs, spec, directory, tag, repeats, warmup=0, **kw) -> tuple[dict, float]:
    from tensornet_fast.screening import screen

    rates: list[float] = []

    def run(k: int) -> None:
        out = os.path.join(directory, f"{tag}-{k}-{time.monotonic_ns()}.csv")
        stats = screen(inputs, out, spec, progress=False, **kw)
        assert stats.n_rows > 0 and not stats.interrupted
        rates.append(stats.molecules_per_s)

    timing = time_call(run, spec.device, repeats=repeats, warmup=warmup)
    return timing, float(np.median(rates[warmup:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="seconds-long run (CI)")
    ap.add_argument("--csv", default=RESULTS_CSV, help="results CSV to append to")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=None, help="molecules in the XYZ library")
    ap.add_argument("--batch-atoms", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from tensornet_fast.screening import ScreenSpec, get_model
    from tensornet_fast.screening.batching import make_batches, single_point
    from tensornet_fast.screening.readers import iter_raw, parse_record

    n = args.n or (32 if args.tiny else 1000)
    n_smiles = 4 if args.tiny else 96
    n_relax = 4 if args.tiny else 48
    relax_steps = 10 if args.tiny else 50
    repeats = 2
    spec = ScreenSpec(device=args.device, batch_atoms=args.batch_atoms)
    env = environment(args.device)
    model = get_model(spec)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        xyz, smi, n_atoms = make_library(d, n, n_smiles)
        base = dict(
            env,
            benchmark="screen",
            implementation="tensornet_fast",
            backend=model.backend,
            dtype=str(model.dtype).replace("torch.", ""),
            batch=spec.atoms_per_batch,
        )

        def row(mode, system, atoms, timing, rate, extra=""):
            rows.append(
                dict(
                    base,
                    mode=mode,
                    system=system,
                    atoms=atoms,
                    ns_per_atom=f"{1e9 * timing['median_s'] / max(atoms, 1):.1f}",
                    notes=f"molecules/s={rate:.1f}" + (f"; {extra}" if extra else ""),
                    **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in timing.items()},
                )
            )
            print(
                f"{mode:11s} {system:18s} {rate:10.1f} molecules/s  ({timing['median_s']:.3f} s)",
                flush=True,
            )

        timing, rate = _screen_rate([xyz], spec, d, "xyz", repeats)
        row("xyz-e2e", f"druglike-{n}", n_atoms, timing, rate)

        max_z = model.config.max_z
        recs = [parse_record(r, max_z) for r in iter_raw([xyz])]
        batches = list(make_batches(recs, spec.atoms_per_batch, spec.window))

        def model_only(_k: int) -> None:
            with torch.no_grad():
                for b in batches:
                    single_point(model, b)

        with torch.no_grad():
            single_point(model, batches[0])  # first-call warm-up
        timing = time_call(model_only, args.device, repeats=repeats, warmup=0)
        row(
            "model-only",
            f"druglike-{n}",
            n_atoms,
            timing,
            n / timing["median_s"],
            f"{len(batches)} batches",
        )

        timing, rate = _screen_rate([smi], spec, d, "smi", 1, parse_workers=0)
        row(
            "smiles-e2e",
            f"drugs-smiles-{n_smiles}",
            0,
            timing,
            rate,
            "ETKDG+H per molecule, 0 parser processes",
        )

        lines = open(xyz).read().splitlines(keepends=True)
        cut = 0
        for _ in range(n_relax):
            cut += int(lines[cut]) + 2
        small = os.path.join(d, "relax.xyz")
        with open(small, "w") as fh:
            fh.writelines(lines[:cut])
        k = sum(int(lines[i]) for i in range(0, cut) if lines[i].strip().isdigit())
        rspec = ScreenSpec(
            device=args.device, batch_atoms=args.batch_atoms, relax=True, max_steps=relax_steps
        )
        timing, rate = _screen_rate([small], rspec, d, "relax", 1)
        row(
            "xyz-relax",
            f"druglike-{n_relax}",
            k,
            timing,
            rate,
            f"FIRE fmax=0.05 max {relax_steps} steps",
        )

        if not args.tiny and not args.no_dask and args.device == "cpu":
            timing, rate = _screen_rate(
                [xyz], ScreenSpec(device="cpu", threads=1), d, "dask", 1, workers=2, shard_size=256
            )
            row(
                "xyz-dask2",
                f"druglike-{n}",
                n_atoms,
                timing,
                rate,
                "LocalCluster 2 workers x 1 thread, incl. worker model load",
            )
    append_rows(rows, args.csv)
    print(f"appended {len(rows)} rows to {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
