"""Measured error of the tabulated filters in float64 (docs/spec.md "Filter modes"):
filter_mode="tabulated" against "exact", both float64 on the cpu backend, relative to max |E|
and max |F| of the exact result, on the bundled model, random models of several sizes and cutoffs
(torchmd-net 3.1 weights, tests/oracle.py) and the benchmark checkpoint (F=128, K=32, r_c=5).

    python bench/table_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import tensornet_fast as tnf  # noqa: E402


def systems(which: str = "all"):
    from systems import molecule_batch, water_box

    z, pos, batch = molecule_batch(dtype=torch.float64)
    if which in ("all", "normal"):
        yield "g2 x4", z, pos, batch, None
        zw, posw, box = water_box(3, dtype=torch.float64)
        yield "water 81 (periodic)", zw, posw, None, box
    if which in ("all", "compressed"):
        # close contacts (bonds shortened to 0.6x: C-H 0.65 A), where the filters are steepest
        n_mol = int(batch.max()) + 1
        sums = torch.zeros(n_mol, 3, dtype=pos.dtype).index_add(0, batch, pos)
        centre = sums / torch.bincount(batch)[:, None]
        squeezed = centre[batch] + 0.6 * (pos - centre[batch])
        yield "g2 x4 compressed 0.6x", z, squeezed, batch, None


def models(folder: str, quick: bool):
    from oracle import make_checkpoint

    yield "default (F=48, r_c=5)", "default"
    sizes = [(16, 8, 4.0), (32, 16, 5.0), (64, 32, 6.0), (128, 32, 5.0)]
    if not quick:
        sizes += [(32, 16, 3.0), (64, 16, 8.0), (128, 64, 5.0)]
    for k, (f, rbf, rc) in enumerate(sizes):
        name = "bench F=128" if (f, rbf, rc) == (128, 32, 5.0) else f"random F={f} K={rbf} r_c={rc}"
        seed = 11 if name == "bench F=128" else 100 + k
        path = os.path.join(folder, f"m{k}.ckpt")
        make_checkpoint(path, seed=seed, embedding_dimension=f, num_rbf=rbf, cutoff_upper=rc)
        yield name, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--systems", choices=("all", "normal", "compressed"), default="all")
    args = parser.parse_args()
    worst_e = worst_f = 0.0
    with tempfile.TemporaryDirectory() as folder:
        print("| model | system | energy | forces |\n| --- | --- | ---: | ---: |")
        for name, path in models(folder, args.quick):
            exact = tnf.load_model(path, precision=64, filter_mode="exact")
            tab = tnf.load_model(path, precision=64, filter_mode="tabulated")
            for sname, z, pos, batch, box in systems(args.systems):
                e0, f0 = exact(z, pos, batch, box)
                e1, f1 = tab(z, pos, batch, box)
                de = float((e1 - e0).abs().max() / e0.abs().max())
                df = float((f1 - f0).abs().max() / f0.abs().max())
                worst_e, worst_f = max(worst_e, de), max(worst_f, df)
                print(f"| {name} | {sname} | {de:.1e} | {df:.1e} |", flush=True)
    print(f"\nworst: energy {worst_e:.1e}, forces {worst_f:.1e} (relative to max |E|, max |F|)")


if __name__ == "__main__":
    main()
