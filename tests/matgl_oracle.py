"""matgl as the oracle of the matgl tests, run as a SUBPROCESS (two matgl versions cannot share
one process, and importing matgl costs seconds): matgl 4.1.2 (installed with the test extras)
writes and evaluates version-2 folders; matgl 2.0.4 (an unpacked wheel, see ``old_matgl_path``;
scripts/ensure_venv.sh puts it into the venv) writes and evaluates version-1 folders, the
convention the pretrained MatPES / ANI-1x potentials were trained with.

    python tests/matgl_oracle.py < job.json > result.json

job: {"make": [model spec, ...], "eval": [{"folder", "dtype", "structures": [...]}, ...]}.
A model spec: folder, seed, elements, units, nblocks, rbf_type, use_smooth, max_n, num_rbf,
cutoff, group, dtype (32 | 64), warp (4.1.2's fused Warp embedding), activation, data_mean,
data_std, refs (element references or not), bare (save the TensorNet without a Potential).
A structure: numbers, positions, cell, pbc. Result: {"eval": [[{"energy", "forces", "stress"}
(eV, eV/A, eV/A^3 with ASE's sign; stress None for molecules)]]}.

The weights are randomised beyond matgl's init (which zeroes biases and sets LayerNorms to 1),
so that every parameter matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

GPA = 160.21766208  # matgl's eV/A^3 -> GPa


def old_matgl_path() -> str | None:
    """Folder holding the unpacked matgl 2.0.4 wheel: $TNF_MATGL_OLD, else <venv>/oracles/
    matgl-2.0.4 (scripts/ensure_venv.sh), else None."""
    path = os.environ.get("TNF_MATGL_OLD") or os.path.join(sys.prefix, "oracles", "matgl-2.0.4")
    return path if os.path.isdir(os.path.join(path, "matgl")) else None


def run(job: dict, version: int, timeout: float = 900) -> dict:
    """Run ``job`` with matgl 4.1.2 (version 2) or 2.0.4 (version 1) in a subprocess."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if version == 1:
        old = old_matgl_path()
        if old is None:
            raise RuntimeError("matgl 2.0.4 (unpacked wheel) not found: run scripts/ensure_venv.sh")
        env["PYTHONPATH"] = old + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"matgl oracle (version {version}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- in the subprocess
def _randomise(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif "linears_tensor" in name:
                # x6 as tests/oracle.py: with the init's scale the layers barely matter
                p.mul_(6.0).add_(0.05 * noise * p.abs().mean())
            elif "emb" in name:
                p.copy_(noise)  # distinct rows and halves, so the pair order matters
            else:
                p.add_(0.05 * noise * p.abs().mean().clamp_min(1e-3))


def _make(spec: dict) -> None:
    import matgl
    import torch
    from matgl.apps.pes import Potential
    from matgl.models import TensorNet

    torch.manual_seed(spec["seed"])
    dtype = torch.float64 if spec.get("dtype", 32) == 64 else torch.float32
    kwargs = dict(
        element_types=tuple(spec["elements"]),
        units=spec.get("units", 16),
        nblocks=spec.get("nblocks", 2),
        rbf_type=spec.get("rbf_type", "SphericalBessel"),
        use_smooth=spec.get("use_smooth", True),
        max_n=spec.get("max_n", 3),
        num_rbf=spec.get("num_rbf", 8),
        cutoff=spec.get("cutoff", 5.0),
        equivariance_invariance_group=spec.get("group", "O(3)"),
        activation_type=spec.get("activation", "swish"),
        is_intensive=False,
        dtype=dtype,
    )
    if matgl.__version__.startswith("4"):
        kwargs["use_warp"] = bool(spec.get("warp", False))
    model = TensorNet(**kwargs)
    _randomise(model, spec["seed"])
    if spec.get("bare"):
        model.save(spec["folder"])
        return
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    refs = None
    if spec.get("refs", True):
        refs = torch.randn(len(spec["elements"]), generator=gen, dtype=torch.float64).to(dtype)
    pot = Potential(
        model=model,
        data_mean=torch.tensor(spec.get("data_mean", 0.3), dtype=dtype),
        data_std=torch.tensor(spec.get("data_std", 1.7), dtype=dtype),
        element_refs=refs,
        calc_stresses=True,
    )
    pot.save(spec["folder"])


_WARP: dict = {}


def _evaluate(entry: dict) -> list[dict]:
    import matgl
    import numpy as np
    from ase import Atoms
    from matgl.apps.pes import Potential

    matgl.set_default_dtype("float", entry.get("dtype", 64))
    if matgl.__version__.startswith("4"):
        import matgl.models._tensornet as tn

        # the plain PyG path (the reference implementation) unless the folder is a Warp one
        _WARP.setdefault("available", tn._warp_available)
        tn._warp_available = _WARP["available"] and bool(entry.get("warp", False))
    try:
        from matgl.ext.ase import Atoms2Graph
    except ImportError:  # matgl 2.0.x
        from matgl.ext._ase_pyg import Atoms2Graph
    with open(os.path.join(entry["folder"], "model.json")) as fh:
        wrapped = json.load(fh)["@class"] == "Potential"
    if wrapped:
        pot = Potential.load(entry["folder"])
    else:  # a bare TensorNet: E = sum of its atomic energies
        from matgl.models import TensorNet

        pot = Potential(model=TensorNet.load(entry["folder"]))
    if entry.get("dtype", 64) == 64:
        pot = pot.double()
    pot.calc_stresses = True
    out = []
    t0 = time.perf_counter()
    for s in entry["structures"]:
        atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])
        g, lat, state = Atoms2Graph(pot.model.element_types, pot.model.cutoff).get_graph(atoms)
        e, f, sigma, _ = pot(g, lat, state)
        periodic = bool(np.all(s["pbc"]))
        out.append(
            {
                "energy": float(e.detach().reshape(-1)[0]),
                "forces": f.detach().double().numpy().tolist(),
                "stress": (sigma.detach().double().reshape(3, 3).numpy() / GPA).tolist()
                if periodic
                else None,
                "n_edges": int(g.edge_index.shape[1]),
            }
        )
    print(
        f"{entry['folder']} float{entry.get('dtype', 64)}: {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return out


def main() -> None:
    warnings.simplefilter("ignore")
    job = json.loads(sys.stdin.read())
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # Warp's banner
        for spec in job.get("make", []):
            _make(spec)
        results = [_evaluate(entry) for entry in job.get("eval", [])]
    import matgl

    print(json.dumps({"eval": results, "matgl": matgl.__version__}))


if __name__ == "__main__":
    main()
