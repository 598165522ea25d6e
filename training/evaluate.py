"""Test-set errors of a trained checkpoint vs GFN2-xTB, computed with tensornet_fast.load_model.

Prints (and optionally writes as JSON) the numbers of tensornet_fast/data/MODEL_CARD.md: energy MAE
per atom [meV/atom], force-component MAE [eV/A], RMSEs, per subset (molecules, dimers, water
clusters). With --write-heldout it also stores a few test structures with their labels for
tests/test_default_model.py.

Run:
    PYTHONPATH=. python training/evaluate.py [--model default] [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_split  # noqa: E402

import tensornet_fast  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {0: "molecules", 1: "dimers", 2: "water clusters"}


def predict(model, data, batch_size=64):
    """Per-structure energies [eV] and per-structure force arrays [eV/A] (float64 numpy)."""
    energies, forces = [], []
    dtype = model.dtype
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        z, pos, batch, _, _, n = data.batch(idx, dtype=dtype)
        e, f = model(z, pos, batch=batch)
        energies.append(e.detach().double().numpy()[:, 0])
        forces.extend(np.split(f.detach().double().numpy(), np.cumsum(n.numpy())[:-1]))
    return np.concatenate(energies), forces


def errors(data, e_pred, f_pred, mask) -> dict:
    idx = np.nonzero(mask)[0]
    n = np.array([len(data.z[i]) for i in idx])
    de = (e_pred[idx] - data.energy[idx]) / n
    df = np.concatenate([f_pred[i] - data.forces[i] for i in idx])
    return {
        "structures": int(len(idx)),
        "atoms": int(n.sum()),
        "energy_mae_meV_per_atom": 1e3 * float(np.abs(de).mean()),
        "energy_rmse_meV_per_atom": 1e3 * float(np.sqrt((de**2).mean())),
        "force_mae_eV_per_A": float(np.abs(df).mean()),
        "force_rmse_eV_per_A": float(np.sqrt((df**2).mean())),
        # baseline: the MAE of predicting zero forces
        "label_force_mean_abs_eV_per_A": float(
            np.abs(np.concatenate([data.forces[i] for i in idx])).mean()
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="checkpoint path or 'default'")
    ap.add_argument("--data", default=os.path.join(HERE, "data", "gfn2_organics.npz"))
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--precision", type=int, default=32, choices=(32, 64))
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument(
        "--write-heldout",
        default=None,
        help="write every k-th structure of the split (with labels) to this JSON file",
    )
    ap.add_argument("--heldout-count", type=int, default=12)
    args = ap.parse_args()

    torch.set_num_threads(1)
    model = tensornet_fast.load_model(args.model, precision=args.precision)
    data = load_split(args.data, args.split)
    t0 = time.time()
    e_pred, f_pred = predict(model, data)
    elapsed = time.time() - t0
    result = {
        "model": args.model,
        "split": args.split,
        "precision": args.precision,
        "all": errors(data, e_pred, f_pred, np.ones(len(data), bool)),
    }
    for k, name in KINDS.items():
        if np.any(data.kind == k):
            result[name] = errors(data, e_pred, f_pred, data.kind == k)
    result["eval_seconds"] = round(elapsed, 1)
    for key in ["all", *KINDS.values()]:
        if key in result:
            r = result[key]
            print(
                f"{args.split:5s} {key:15s} {r['structures']:5d} structures  "
                f"E MAE {r['energy_mae_meV_per_atom']:6.2f} meV/atom (RMSE "
                f"{r['energy_rmse_meV_per_atom']:6.2f})  F MAE {r['force_mae_eV_per_A']:.4f} eV/A "
                f"(RMSE {r['force_rmse_eV_per_A']:.4f})"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.write_heldout:
        step = max(1, len(data) // args.heldout_count)
        idx = np.arange(0, len(data), step)[: args.heldout_count]
        names = np.load(args.data)["system_names"]
        records = [
            {
                "system": str(names[data.system[i]]),
                "kind": KINDS[int(data.kind[i])],
                "z": data.z[i].astype(int).tolist(),
                "pos": np.round(data.pos[i].astype(np.float64), 6).tolist(),
                "energy_eV": float(data.energy[i]),
                "forces_eV_per_A": np.round(data.forces[i].astype(np.float64), 6).tolist(),
            }
            for i in idx
        ]
        with open(args.write_heldout, "w") as fh:
            json.dump(
                {
                    "source": f"{os.path.basename(args.data)} split={args.split}, every "
                    f"{step}-th structure; GFN2-xTB (tblite) labels, eV and eV/A",
                    "structures": records,
                },
                fh,
            )
        print(f"wrote {len(records)} held-out structures to {args.write_heldout}")


if __name__ == "__main__":
    main()
