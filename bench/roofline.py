"""Roofline report: how far each measured implementation is from what this device can do.

1. The work model: FLOPs and minimum bytes per atom-step (energy + forces) of TensorNet, counted
   term by term from the hyper-parameters and the measured average number of edges per atom
   (``edges / atoms`` of a CSV row, self-loops included, as the model's graph has them).
2. Device ceilings measured here by this script: a large memory copy (GB/s) and a large fp32
   GEMM (GFLOP/s). Written as ``benchmark="ceiling"`` rows.
3. Each ``benchmark="model"`` row's achieved GFLOP/s = model FLOPs / median time, and its fraction
   of the roofline bound min(peak FLOP/s, intensity x GB/s).

Counting conventions: one multiply-add = 2 FLOPs; exp / SiLU / division / sqrt count as one FLOP
each (they cost more, which only makes our fractions conservative); the element-pair embedding
Z_ij is a table lookup (docs/spec.md lever 5, exact) and counts 0. The force backward needs the
adjoints of the inputs of every linear, never of the weights: each matrix product costs its forward
MACs once more, each element-wise op about twice its forward. All implementations are charged the
same useful FLOPs, so the fractions compare algorithms, not bookkeeping.

Run: ``python -m bench.roofline [--csv PATH] [--out-dir DIR] [--tiny]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time

import torch

from bench import harness


@dataclasses.dataclass
class Work:
    flops: float  # per atom-step (forward + force backward)
    min_bytes: float  # per atom-step, lower bound of DRAM traffic
    terms: dict[str, float]  # FLOPs per atom-step by term (for the report)

    @property
    def intensity(self) -> float:
        return self.flops / self.min_bytes


def model_work(F: int, K: int, L: int, edges_per_atom: float, group: str = "O(3)") -> Work:
    """FLOPs and minimum bytes per atom and step for TensorNet (docs/spec.md "Where the cost is").

    ``edges_per_atom`` counts directed edges received per atom, self-loop included."""
    E = edges_per_atom
    t: dict[str, float] = {}
    mac = 2.0  # FLOPs per multiply-add

    # ---------------- per edge, once per step (embedding) ----------------
    # RBF: u = exp(alpha (r_l - d)) once, then per k: (u - mu_k)^2 * beta_k, exp, * phi -> ~5 K
    # cosine cutoff phi(d), |r|, r_hat: ~20
    t["edge: distances, cutoff, RBF"] = E * (5 * K + 20)
    # distance_proj{1,2,3}: 3 linears K -> F with bias, then * c_ij (c = phi * Z_ij, Z tabulated)
    t["edge: embedding projections (3 K.F)"] = E * (3 * K * F * mac + 3 * F + F)
    # scatter into I (F), A (3F: f_a * r_hat), S (5 independent components of r r^T - |r|^2/3)
    t["edge: embedding scatter"] = E * (F + 3 * F + 5 * F) * mac

    # ---------------- per atom, once per step (embedding tail) ----------------
    # ||X||^2 (9F MACs), LayerNorm(F) ~ 8F, linears_scalar F -> 2F -> 3F with SiLU (~4 FLOPs each)
    t["atom: embedding norm + scalar MLP"] = (
        9 * F * mac + 8 * F + (2 * F * F + 6 * F * F) * mac + 5 * F * 4
    )
    # linears_tensor on I (1 comp), A (3), S (5): 9 F^2 MACs; * n_{I,A,S}: 9F
    t["atom: embedding channel linears"] = 9 * F * F * mac + 9 * F

    # ---------------- per edge and layer ----------------
    # filter MLP K -> F -> 2F -> 3F (+ biases) = K.F + 2F^2 + 6F^2 MACs, SiLU on 6F, * phi on 3F
    t["edge x layer: filter MLP"] = (
        L * E * ((K * F + 2 * F * F + 6 * F * F) * mac + 6 * F * 4 + 3 * F)
    )
    # message f^I I_j (F) + f^A A_j (3F) + f^S S_j (5F) accumulated into M_i: 9F MACs
    t["edge x layer: messages"] = L * E * 9 * F * mac

    # ---------------- per atom and layer ----------------
    # X / (||X||^2 + 1): norm 9F MACs + 9F divides; Y = W_t{0,1,2} on 9 comps: 9F^2 MACs
    t["atom x layer: normalise + Y linears"] = L * (9 * F * mac + 9 * F + 9 * F * F * mac)
    # O(3): M Y + Y M, two 3x3 products per channel (27F MACs each) (SO(3): one, x2 scale)
    n_prod = 2 if group == "O(3)" else 1
    t["atom x layer: 3x3 products"] = L * (n_prod * 27 * F * mac + 9 * F)
    # dec(B)/(||B||^2 + 1): ~9F MACs + 18F; dX = W_t{3,4,5}: 9F^2 MACs
    t["atom x layer: normalise + dX linears"] = L * (9 * F * mac + 18 * F + 9 * F * F * mac)
    # X_bar + dX + dX.dX: 27F MACs + 18F adds
    t["atom x layer: residual dX.dX"] = L * (27 * F * mac + 18 * F)

    # ---------------- output ----------------
    # [3I^2, |A|^2, |S|^2] (9F MACs), LayerNorm(3F) ~24F, Linear 3F -> F + SiLU,
    # head F -> F/2 (SiLU) -> 1
    t["atom: output head"] = (
        9 * F * mac + 24 * F + 3 * F * F * mac + 4 * F + (F * F / 2 + F / 2) * mac + 2 * F
    )

    forward = sum(t.values())
    # force backward: every MAC once more (input adjoints only), element-wise ~2x; we charge the
    # whole forward once more, plus the final per-edge dE/dd * r_hat scatter (~12 FLOPs / edge)
    t["backward (input adjoints ~ 1x forward)"] = forward + 12 * E
    flops = sum(t.values())

    # -------------- minimum bytes (fp32, fused kernels, docs/spec.md levers 3 and 6) --------------
    # per atom: read z + pos (16 B), write forces (12 B); neighbour list read once per edge pass
    # (int32 sender index: forward embedding + L layers, same again in the backward);
    # node features 9F floats written and read once per layer (forward) and the backward reads
    # them again and writes/reads one adjoint of the same size per layer.
    # Weights (~0.77M floats) are read once per step: negligible per atom at >= 1k atoms, omitted.
    node_state = 9 * F * 4
    min_bytes = 16 + 12 + 2 * (L + 1) * E * 4 + (L + 1) * 2 * node_state + L * 4 * node_state
    return Work(flops, float(min_bytes), t)


# ------------------------------------------------------------------ ceilings


def measure_ceilings(device: str = "cpu", tiny: bool = False) -> list[dict]:
    """A large copy (GB/s, read + write counted) and a large fp32 GEMM (GFLOP/s); best of 5."""
    dev = torch.device(device)
    n_bytes = (16 if tiny else 512) * 2**20 if dev.type == "cpu" else 2**30
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)

    def copy(_k):
        dst.copy_(src)

    t_copy = harness.time_call(copy, dev, repeats=5, warmup=1)
    n = (256 if tiny else 2048) if dev.type == "cpu" else 8192
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    # fp32 means fp32: no TF32 on GPU for the ceiling the exact mode is held to.
    old = torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False

    def gemm(_k):
        torch.mm(a, b)

    t_gemm = harness.time_call(gemm, dev, repeats=5, warmup=1)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = old
    env = harness.environment(dev)
    best_copy = t_copy["p20_s"]  # near-best, robust to one lucky sample
    best_gemm = t_gemm["p20_s"]
    rows = []
    rows.append(
        {
            **env,
            **t_copy,
            "benchmark": "ceiling",
            "implementation": "torch.copy_",
            "backend": "torch",
            "mode": "memcpy",
            "dtype": "float32",
            "system": f"copy_{n_bytes >> 20}MiB",
            "gbps": 2 * n_bytes / best_copy / 1e9,
            "notes": "GB/s from p20 time, read+write counted" + (";tiny=1" if tiny else ""),
        }
    )
    rows.append(
        {
            **env,
            **t_gemm,
            "benchmark": "ceiling",
            "implementation": "torch.mm",
            "backend": "torch",
            "mode": "gemm",
            "dtype": "float32",
            "system": f"gemm_{n}",
            "gflops": 2 * n**3 / best_gemm / 1e9,
            "notes": "GFLOP/s from p20 time, fp32 (no TF32)" + (";tiny=1" if tiny else ""),
        }
    )
    return rows


# ------------------------------------------------------------------ report


def parse_notes(notes: str) -> dict[str, str]:
    out = {}
    for part in (notes or "").split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def model_of(row: dict) -> tuple[int, int, int, float] | None:
    """(F, K, L, r_c) from a row's notes ``model=L2-F128-K32-rc5``."""
    spec = parse_notes(row.get("notes", "")).get("model", "")
    m = re.fullmatch(r"L(\d+)-F(\d+)-K(\d+)-rc([\d.]+)", spec)
    if not m:
        return None
    return int(m[2]), int(m[3]), int(m[1]), float(m[4])


def model_tag(F: int, K: int, L: int, rc: float) -> str:
    return f"L{L}-F{F}-K{K}-rc{rc:g}"


def latest(rows: list[dict], key) -> list[dict]:
    """Keep the newest row (by date, then file order) for every key."""
    best: dict = {}
    for r in rows:
        k = key(r)
        if k not in best or r["date"] >= best[k]["date"]:
            best[k] = r
    return list(best.values())


def report(rows: list[dict], device_filter: str | None = None) -> tuple[list[dict], str]:
    """Markdown roofline table for the newest model rows of each device."""
    rows = [r for r in rows if "tiny=1" not in (r.get("notes") or "")]
    if device_filter:
        rows = [r for r in rows if r["device"] == device_filter]
    ceilings = latest(
        [r for r in rows if r["benchmark"] == "ceiling"], lambda r: (r["device"], r["mode"])
    )
    peak = {(r["device"], r["mode"]): float(r["gflops"] or r["gbps"]) for r in ceilings}
    models = latest(
        [r for r in rows if r["benchmark"] == "model" and model_of(r)],
        lambda r: (r["device"], r["implementation"], r["backend"], r["system"], r["notes"]),
    )
    lines = []
    out_rows = []
    for dev in sorted({r["device"] for r in models}):
        bw = peak.get((dev, "memcpy"))
        fl = peak.get((dev, "gemm"))
        if not bw or not fl:
            continue
        lines.append(f"### {dev}\n")
        lines.append(
            f"Measured ceilings: memory copy {bw:.1f} GB/s, fp32 GEMM {fl:.1f} GFLOP/s "
            f"(ridge point {fl / bw:.1f} FLOP/B).\n"
        )
        lines.append(
            "| model | system | atoms | edges/atom | GFLOP/atom-step | min B/atom-step "
            "| FLOP/B | implementation | median s | achieved GFLOP/s | % of roofline |"
        )
        lines.append("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for r in sorted(
            models,
            key=lambda r: (
                r["notes"],
                int(r["atoms"]),
                r["system"],
                r["implementation"],
                r["backend"],
            ),
        ):
            if r["device"] != dev:
                continue
            F, K, L, rc = model_of(r)
            atoms, edges = int(r["atoms"]), int(r["edges"])
            w = model_work(F, K, L, edges / atoms)
            achieved = w.flops * atoms / float(r["median_s"]) / 1e9
            bound = min(fl, w.intensity * bw)
            frac = achieved / bound
            impl = f"{r['implementation']} [{r['backend']}]"
            lines.append(
                f"| L{L} F{F} K{K} r_c={rc:g} | {r['system']} | {atoms} | {edges / atoms:.1f} "
                f"| {w.flops / 1e9:.4f} | {w.min_bytes:.0f} | {w.intensity:.0f} | {impl} "
                f"| {float(r['median_s']):.4g} | {achieved:.2f} | {100 * frac:.1f} |"
            )
            out_rows.append({**r, "gflops": achieved, "roofline_fraction": frac})
        lines.append("")
    return out_rows, "\n".join(lines)


def work_table(F=128, K=32, L=2, edges_per_atom=53.0) -> str:
    w = model_work(F, K, L, edges_per_atom)
    lines = [
        f"Work per atom-step, L{L} F{F} K{K}, {edges_per_atom:g} edges/atom "
        f"(self-loop included): {w.flops / 1e6:.2f} MFLOP, >= {w.min_bytes:.0f} B "
        f"({w.intensity:.0f} FLOP/B).\n",
        "| term | MFLOP/atom-step | share |",
        "|---|---:|---:|",
    ]
    for k, v in w.terms.items():
        lines.append(f"| {k} | {v / 1e6:.3f} | {100 * v / w.flops:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n")[0])
    p.add_argument("--csv", default=harness.RESULTS_CSV)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="small copy/GEMM (smoke test)")
    p.add_argument("--out-dir", default=None, help="where ROOFLINE.md goes (default: CSV's folder)")
    p.add_argument("--no-measure", action="store_true", help="only rebuild the report from the CSV")
    args = p.parse_args(argv)
    if not args.no_measure:
        t0 = time.perf_counter()
        harness.append_rows(measure_ceilings(args.device, args.tiny), args.csv)
        print(f"ceilings measured in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = harness.read_rows(args.csv)
    dev_name = harness.device_name(args.device)
    _, table = report(rows, device_filter=None)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out_dir, exist_ok=True)
    text = (
        "# Roofline\n\nRegenerate: `python -m bench.roofline --csv "
        f"{os.path.relpath(args.csv)}` (this run: {dev_name}).\n\n"
        "FLOPs/bytes are the work model in bench/roofline.py (`model_work`), "
        "charged equally to every implementation.\n\n" + work_table(128, 32, 2, 53.0) + "\n" + table
    )
    with open(os.path.join(out_dir, "ROOFLINE.md"), "w") as fh:
        fh.write(text)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
