"""Generate the GFN2-xTB training set of the bundled default model (reproducible, seeded).

Systems: neutral closed-shell organic molecules (H C N O F S Cl, 3-30 atoms) from the SMILES list
below, dimers of small molecules (intermolecular contacts) and small water clusters.
Geometries: RDKit ETKDG conformers, MMFF-relaxed copies of them, and off-equilibrium samples made by
Gaussian Cartesian displacements (sigma 0.02-0.13 A, larger for H) of the relaxed conformers.
Labels: GFN2-xTB (tblite) total energy [eV] and forces [eV/A].
Split: by molecule (a molecule, and every dimer containing it, is in exactly one of train/val/test);
water clusters are split by cluster.

Run (about 5-10 min on one core):
    OMP_NUM_THREADS=1 python training/generate_data.py [--out training/data/gfn2_organics.npz]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem
from tblite.interface import Calculator

RDLogger.DisableLog("rdApp.*")

HARTREE_EV = 27.211386245988
BOHR_A = 0.529177210903
SEED = 20261124
ELEMENTS = (1, 6, 7, 8, 9, 16, 17)

SMILES = """
C CC CCC CCCC CC(C)C CCCCC CC(C)(C)C C1CC1 C1CCC1 C1CCCC1 C1CCCCC1 CCCCCC CCCCCCC
C=C CC=C C=CC=C CC=CC C#C CC#C C1=CCCC1 C1=CC=CC1 c1ccccc1 Cc1ccccc1 CCc1ccccc1
Cc1ccccc1C c1ccc2ccccc2c1 C=Cc1ccccc1 C1CC2CCC1C2
O CO CCO CCCO CC(C)O CC(C)(C)O OCCO OCC(O)CO C1CCOC1 C1COCCO1 COC CCOCC COCCOC
C=O CC=O CCC=O CC(C)=O CCC(C)=O O=C1CCCC1 O=C1CCCCC1 OC=O CC(=O)O CCC(=O)O OC(=O)C(=O)O
COC=O CC(=O)OC CCOC(C)=O C1CC(=O)O1 O=C1CCCO1 Oc1ccccc1 COc1ccccc1 O=Cc1ccccc1
OC(=O)c1ccccc1 CC(=O)c1ccccc1 c1ccoc1 Cc1ccco1 O=C1C=CC(=O)C=C1 OC1CCCCC1 CC(O)C(=O)O
N CN CCN CNC CN(C)C CCCN NCCN C1CCNC1 C1CCNCC1 C1COCCN1 CC#N CCC#N N#CC#N
NC=O CNC=O CN(C)C=O CC(N)=O CC(=O)NC NC(N)=O NC(=O)O c1ccncc1 Cc1ccncc1 c1ccnnc1
c1cnccn1 c1cncnc1 c1cc[nH]c1 c1c[nH]cn1 c1cn[nH]c1 c1ccc2[nH]ccc2c1 Nc1ccccc1
CNc1ccccc1 N#Cc1ccccc1 O=[N+]([O-])c1ccccc1 C[N+](=O)[O-] CC(=O)Nc1ccccc1 NCC(=O)O
CC(N)C(=O)O O=C1CCCN1 O=C1NC(=O)C=CN1 Cc1c[nH]c(=O)[nH]c1=O Nc1ncnc2[nH]cnc12
CC(=O)Nc1ccc(O)cc1 c1ccc2ncccc2c1 C1=NC=NC=N1 NN CNN N=C=O CN=C=O CC=NO ON=C1CCCCC1
OCCN CC(O)CN NCCO COCCN c1ccc(cc1)C#N Cc1ccc(N)cc1 Cn1ccnc1 Cn1cccc1 NC1CCCCC1
F CF FC(F)F FC(F)(F)F CCF FCCF CC(F)(F)F OCC(F)(F)F Fc1ccccc1 Fc1ccc(F)cc1
FC(F)(F)c1ccccc1 CC(=O)F FC=C FC(F)=C(F)F O=C(O)C(F)(F)F Nc1ccc(F)cc1 Fc1ccncc1
Cl CCl ClCCl ClC(Cl)Cl ClC(Cl)(Cl)Cl CCCl ClCCCl CC(C)Cl ClC=C ClC=CCl Clc1ccccc1
Clc1ccc(Cl)cc1 CC(=O)Cl ClCC(=O)O Oc1ccc(Cl)cc1 Clc1ccncc1 FC(F)(Cl)Cl ClC(F)(F)F
Cc1ccc(Cl)cc1 ClCCO ClC(Cl)=C(Cl)Cl
S CS CCS CSC CCSCC CSSC C1CCSC1 c1ccsc1 Cc1cccs1 Sc1ccccc1 CSc1ccccc1 CS(C)=O
CS(C)(=O)=O CS(=O)(=O)O CS(N)(=O)=O NS(=O)(=O)c1ccccc1 S=C=S O=C=S CC(=S)N NC(N)=S
C1CSCCS1 SCCO CSCCN CC(=O)S CSC#N c1cscn1 Cc1cscn1 CCS(=O)(=O)Cl CS(=O)(=O)Cl
O=S1(=O)CCCC1 CC(=O)SC S=C1NCCN1 CSCC(N)C(=O)O NC(CS)C(=O)O
OO O=C=O C=C=O CC(C)=C OC=CC=O C=CC#N C=CC(=O)O C=CC=O CC1=CC(=O)CC(C)(C)C1
CC(C)CC(=O)O CCCCO CCCCCO CCCCCCO CC(=O)CC(C)=O O=CC=O NCC#N OCC#N CC(O)=O
CC12CCC(CC1)C(C)(C)O2 CC(C)c1ccccc1 c1ccc(cc1)Oc1ccccc1 c1ccc(cc1)-c1ccccc1
CC(C)(C)c1ccccc1 COc1ccc(C=O)cc1 Cc1ccc(S(N)(=O)=O)cc1 O=C(O)c1ccccc1O
CC(C)NCC(O)COc1ccccc1 CN1CCN(C)CC1 c1ccc2sccc2c1 c1ccc2occc2c1 O=c1ccoc2ccccc12
Cc1ccc(F)c(Cl)c1 FC(F)Oc1ccccc1 ClCc1ccccc1 OCc1ccccc1 NCc1ccccc1 SCc1ccccc1
N#CCC#N O=C1CCC(=O)N1 O=C1CCC(=O)O1 CC(C)(C)OC(=O)N COC(=O)C=C CC(=C)C(=O)OC
"""


def mol_list() -> list[str]:
    smiles, seen = [], set()
    for s in SMILES.split():
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"bad SMILES {s}")
        mol = Chem.AddHs(mol)
        zs = {a.GetAtomicNum() for a in mol.GetAtoms()}
        can = Chem.MolToSmiles(Chem.RemoveHs(mol))
        if not zs <= set(ELEMENTS) or not 3 <= mol.GetNumAtoms() <= 30 or can in seen:
            continue
        if Chem.GetFormalCharge(mol) != 0:
            continue
        seen.add(can)
        smiles.append(can)
    return smiles


def conformers(
    smi: str, n_conf: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Atomic numbers, raw ETKDG conformers and their MMFF-relaxed copies (positions in A)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smi))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.pruneRmsThresh = 0.3
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n_conf, params=params))
    if not ids:
        params.useRandomCoords = True
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n_conf, params=params))
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    raw = [mol.GetConformer(i).GetPositions().copy() for i in ids]
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
    else:
        AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=2000)
    relaxed = [mol.GetConformer(i).GetPositions().copy() for i in ids]
    return z, raw, relaxed


def displace(pos: np.ndarray, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thermal-like Cartesian noise: sigma ~ U(0.02, 0.10) A for heavy atoms, x1.3 for H."""
    sigma = rng.uniform(0.02, 0.10)
    scale = np.where(z == 1, 1.3, 1.0)[:, None]
    return pos + rng.normal(0.0, sigma, pos.shape) * scale


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def place_pair(pa: np.ndarray, pb: np.ndarray, dmin: float, rng: np.random.Generator) -> np.ndarray:
    """Put molecule b (randomly rotated) along a random direction so that the closest
    intermolecular atom pair is at distance dmin; returns b's positions."""
    pa = pa - pa.mean(0)
    pb = (pb - pb.mean(0)) @ random_rotation(rng).T
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    lo, hi = 0.0, 30.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        d = np.linalg.norm(pa[:, None] - (pb + mid * u)[None], axis=-1).min()
        lo, hi = (mid, hi) if d < dmin else (lo, mid)
    return pb + hi * u


def water_cluster(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    water = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])
    radius = 1.6 * n ** (1 / 3) + 0.8
    centres: list[np.ndarray] = []
    while len(centres) < n:
        c = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(c) <= radius and all(np.linalg.norm(c - o) >= 2.6 for o in centres):
            centres.append(c)
    pos = np.concatenate([(water - water.mean(0)) @ random_rotation(rng).T + c for c in centres])
    return np.tile([8, 1, 1], n), pos


def gfn2(z: np.ndarray, pos: np.ndarray) -> tuple[float, np.ndarray] | None:
    """GFN2-xTB energy [eV] and forces [eV/A], or None if the SCF fails."""
    try:
        calc = Calculator("GFN2-xTB", z, pos / BOHR_A)
        calc.set("verbosity", 0)
        calc.set("max-iter", 300)
        res = calc.singlepoint()
    except Exception:  # noqa: BLE001 - tblite raises RuntimeError on SCF failure
        return None
    return float(res.get("energy")) * HARTREE_EV, -np.asarray(
        res.get("gradient")
    ) * HARTREE_EV / BOHR_A


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "data", "gfn2_organics.npz")
    )
    ap.add_argument("--confs", type=int, default=4, help="ETKDG conformers per molecule")
    ap.add_argument("--noisy", type=int, default=10, help="displaced samples per conformer")
    ap.add_argument("--dimers", type=int, default=2400)
    ap.add_argument("--waters", type=int, default=600)
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    t0 = time.time()

    smiles = mol_list()
    perm = rng.permutation(len(smiles))
    n_val = n_test = max(1, round(0.1 * len(smiles)))
    mol_split = np.zeros(len(smiles), dtype=np.int8)
    mol_split[perm[:n_test]] = 2
    mol_split[perm[n_test : n_test + n_val]] = 1
    print(
        f"{len(smiles)} molecules: train {np.sum(mol_split == 0)}, val {n_val}, test {n_test}",
        flush=True,
    )

    systems: list[str] = []
    rec: dict[str, list] = {
        k: [] for k in ("z", "pos", "energy", "forces", "system", "kind", "split")
    }

    def add(z, pos, system, kind, split):
        lab = gfn2(z, pos)
        if lab is None or not np.isfinite(lab[0]) or np.abs(lab[1]).max() > 50.0:
            return False
        rec["z"].append(z.astype(np.int8))
        rec["pos"].append(pos.astype(np.float32))
        rec["energy"].append(lab[0])
        rec["forces"].append(lab[1].astype(np.float32))
        rec["system"].append(system)
        rec["kind"].append(kind)
        rec["split"].append(split)
        return True

    relaxed_by_mol: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
    for m, smi in enumerate(smiles):
        z, raw, relaxed = conformers(smi, args.confs, SEED + m)
        relaxed_by_mol[m] = (z, relaxed)
        sid = len(systems)
        systems.append(smi)
        for p_raw, p_rel in zip(raw, relaxed):
            add(z, p_raw, sid, 0, mol_split[m])
            add(z, p_rel, sid, 0, mol_split[m])
            for _ in range(args.noisy):
                add(z, displace(p_rel, z, rng), sid, 0, mol_split[m])
        if m % 20 == 0:
            print(
                f"  molecule {m}/{len(smiles)} {smi}: {len(rec['energy'])} structures, "
                f"{time.time() - t0:.0f} s",
                flush=True,
            )

    small = [m for m in relaxed_by_mol if len(relaxed_by_mol[m][0]) <= 16]
    for k in range(args.dimers):
        split = int(rng.choice(3, p=[0.8, 0.1, 0.1]))
        pool = [m for m in small if mol_split[m] == split]
        a, b = rng.choice(pool, 2)
        za, ca = relaxed_by_mol[a]
        zb, cb = relaxed_by_mol[b]
        pa = displace(ca[rng.integers(len(ca))], za, rng)
        pb = place_pair(
            pa, displace(cb[rng.integers(len(cb))], zb, rng), rng.uniform(1.7, 4.5), rng
        )
        pa = pa - pa.mean(0)
        sid = len(systems)
        systems.append(f"{smiles[a]}.{smiles[b]}")
        add(np.concatenate([za, zb]), np.concatenate([pa, pb]), sid, 1, split)
        if k % 400 == 0:
            print(
                f"  dimer {k}/{args.dimers}: {len(rec['energy'])} structures, "
                f"{time.time() - t0:.0f} s",
                flush=True,
            )

    for _ in range(args.waters):
        n = int(rng.integers(2, 11))
        z, pos = water_cluster(n, rng)
        sid = len(systems)
        systems.append(f"(H2O){n}")
        add(z, displace(pos, z, rng), sid, 2, int(rng.choice(3, p=[0.8, 0.1, 0.1])))

    n_atoms = np.array([len(z) for z in rec["z"]], dtype=np.int32)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(
        args.out,
        z=np.concatenate(rec["z"]),
        pos=np.concatenate(rec["pos"]),
        forces=np.concatenate(rec["forces"]),
        energy=np.array(rec["energy"], dtype=np.float64),
        n_atoms=n_atoms,
        system=np.array(rec["system"], dtype=np.int32),
        kind=np.array(rec["kind"], dtype=np.int8),
        split=np.array(rec["split"], dtype=np.int8),
        system_names=np.array(systems),
        seed=np.array(SEED),
    )
    split = np.array(rec["split"])
    print(
        f"wrote {args.out}: {len(n_atoms)} structures, {n_atoms.sum()} atoms "
        f"(train {np.sum(split == 0)}, val {np.sum(split == 1)}, test {np.sum(split == 2)}), "
        f"{time.time() - t0:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
