"""Plots, regenerated from the CSV only (never from memory): ``python -m bench.plots``.

- ``time_per_atom.png``: ns per atom-step vs atoms, periodic water boxes, one line per
  implementation (p20-p80 bars), one panel per model.
- ``speedup.png``: our backends' speed-up over each torchmd-net path, every measured case.
- ``radius_graph.png``: neighbour-list time vs atoms (``benchmark="radius_graph"`` rows).
- ``stages.png``: where our reference backend's step goes (``benchmark="model_stage"`` rows).
- ``cpu_backend.png``: the "cpu" backend (``benchmark="cpu_backend"`` rows of
  bench/bench_cpu_backend.py): ns/atom/step sweep and per-stage profile; its table (speed-up and
  memory vs torchmd-net, error vs float64) is appended to ``HEADLINE.md``.
- ``HEADLINE.md``: the headline table (markdown) with the device named.

Only the newest row per (device, benchmark, implementation, backend, system, model) is used,
rows of ``--tiny`` smoke runs never are. ``--device-name`` picks a device when the CSV holds
several (default: the device of the newest model row).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict

from bench import harness
from bench.roofline import parse_notes

PEER_FAMILY = "torchmd-net"


def _label(r: dict) -> str:
    if r["implementation"] == PEER_FAMILY:
        return {"default": "torchmd-net default (Warp)", "pure": "torchmd-net pure PyTorch"}.get(
            r["backend"], f"torchmd-net {r['backend']}"
        )
    return f"{r['implementation']} [{r['backend']}]"


def _read_rows(csv: str, include_tiny: bool) -> list[dict]:
    """The CSV's rows, without those of ``--tiny`` smoke runs unless asked for."""
    return [
        r for r in harness.read_rows(csv) if include_tiny or "tiny=1" not in (r.get("notes") or "")
    ]


def load(
    csv: str, device_name: str | None = None, include_tiny: bool = False
) -> tuple[list[dict], str | None]:
    rows = _read_rows(csv, include_tiny)
    for r in rows:
        r["_notes"] = parse_notes(r.get("notes", ""))
    if device_name is None:
        model_rows = [r for r in rows if r["benchmark"] == "model"] or rows
        device_name = max(model_rows, key=lambda r: r["date"])["device"] if model_rows else None
    rows = [r for r in rows if r["device"] == device_name]
    newest: dict = {}
    for r in rows:
        key = (
            r["benchmark"],
            r["implementation"],
            r["backend"],
            r["mode"],
            r["system"],
            r["_notes"].get("model"),
            r["_notes"].get("stage"),
            r["dtype"],
        )
        if key not in newest or r["date"] >= newest[key]["date"]:
            newest[key] = r
    return list(newest.values()), device_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_time_per_atom(rows: list[dict], device: str, path: str) -> bool:
    water = [r for r in rows if r["benchmark"] == "model" and r["system"].startswith("water_box")]
    if not water:
        return False
    plt = _plt()
    models = sorted({r["_notes"]["model"] for r in water})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        lines = defaultdict(list)
        for r in water:
            if r["_notes"]["model"] == model:
                lines[_label(r)].append(r)
        for label, rs in sorted(lines.items()):
            rs.sort(key=lambda r: int(r["atoms"]))
            x = [int(r["atoms"]) for r in rs]
            y = [float(r["ns_per_atom"]) / 1e3 for r in rs]
            lo = [yy - float(r["p20_s"]) / int(r["atoms"]) * 1e6 for yy, r in zip(y, rs)]
            hi = [float(r["p80_s"]) / int(r["atoms"]) * 1e6 - yy for yy, r in zip(y, rs)]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("atoms (periodic water box)")
        ax.set_ylabel("µs per atom-step (energy + forces)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Time per atom-step, median with p20-p80 — {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def speedups(rows: list[dict]) -> list[dict]:
    """One entry per (ours backend, case, peer): peer median / our median."""
    model = [r for r in rows if r["benchmark"] == "model"]
    by_case = defaultdict(dict)
    for r in model:
        by_case[(r["system"], r["_notes"]["model"], int(r["atoms"]))][
            (r["implementation"], r["backend"])
        ] = r
    out = []
    for (system, tag, atoms), impls in sorted(by_case.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        ours = {k: v for k, v in impls.items() if k[0] != PEER_FAMILY}
        peers = {k: v for k, v in impls.items() if k[0] == PEER_FAMILY}
        for _, o in sorted(ours.items()):
            for _, pr in sorted(peers.items()):
                out.append(
                    {
                        "system": system,
                        "model": tag,
                        "atoms": atoms,
                        "ours": _label(o),
                        "peer": _label(pr),
                        "ratio": float(pr["median_s"]) / float(o["median_s"]),
                        "ours_row": o,
                        "peer_row": pr,
                    }
                )
    return out


def plot_speedup(rows: list[dict], device: str, path: str) -> bool:
    sp = speedups(rows)
    if not sp:
        return False
    plt = _plt()
    cases = sorted({(s["model"], s["atoms"], s["system"]) for s in sp})
    series = sorted({(s["ours"], s["peer"]) for s in sp})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(cases) * len(series)), 4.5))
    for k, ser in enumerate(series):
        xs, ys = [], []
        for c, case in enumerate(cases):
            for s in sp:
                if (s["model"], s["atoms"], s["system"]) == case and (s["ours"], s["peer"]) == ser:
                    xs.append(c + (k - (len(series) - 1) / 2) * width)
                    ys.append(s["ratio"])
        ax.bar(xs, ys, width, label=f"{ser[0]} vs {ser[1]}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{s}\n{m}" for m, _, s in cases], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("peer time / our time (> 1: ours faster)")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.legend(fontsize=8)
    ax.set_title(f"Speed-up over torchmd-net 3.1 — {device}", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_radius_graph(rows: list[dict], device: str, path: str) -> bool:
    rg = [r for r in rows if r["benchmark"] == "radius_graph"]
    if not rg:
        return False
    plt = _plt()
    # The latest measurement of each (implementation, mode, cutoff, size): re-runs replace
    # older rows instead of zigzagging the line.
    latest = {}
    for r in sorted(rg, key=lambda r: r["date"]):
        key = (_label(r), r["mode"], r["_notes"].get("cutoff", ""), int(r["atoms"]))
        latest[key] = r
    lines = defaultdict(list)
    for (label, mode, cutoff, _), r in latest.items():
        lines[(label, mode, cutoff)].append(r)
    fig, (ax, ax_ns) = plt.subplots(1, 2, figsize=(11, 4.5))
    for (label, mode, cutoff), rs in sorted(lines.items()):
        rs.sort(key=lambda r: int(r["atoms"]))
        name = " ".join(x for x in (label, mode, f"r_c={cutoff}" if cutoff else "") if x)
        atoms = [int(r["atoms"]) for r in rs]
        ax.plot(atoms, [float(r["median_s"]) * 1e3 for r in rs], marker="o", label=name)
        ax_ns.plot(atoms, [float(r["ns_per_atom"]) for r in rs], marker="o", label=name)
    for a in (ax, ax_ns):
        a.set_xscale("log")
        a.set_xlabel("atoms")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("median time per neighbour list (ms)")
    ax_ns.set_yscale("log")
    ax_ns.set_ylabel("ns per atom (flat = linear scaling)")
    ax.legend(fontsize=7)
    ax.set_title(f"Neighbour-list scaling — {device}", fontsize=10)
    ax_ns.set_title("time per atom (latest row of each size)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_stages(rows: list[dict], device: str, path: str) -> bool:
    st = [
        r for r in rows if r["benchmark"] == "model_stage" and r["_notes"].get("stage") != "total"
    ]
    if not st:
        return False
    plt = _plt()
    groups = sorted({(r["_notes"]["model"], int(r["atoms"]), r["system"], _label(r)) for r in st})
    stages = []
    for r in sorted(st, key=lambda r: r["date"]):  # first-seen order = execution order
        if r["_notes"]["stage"] not in stages:
            stages.append(r["_notes"]["stage"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.8))
    bottoms = [0.0] * len(groups)
    for stage in stages:
        vals = []
        for g in groups:
            v = [
                float(r["ns_per_atom"]) / 1e3
                for r in st
                if r["_notes"]["stage"] == stage
                and (r["_notes"]["model"], int(r["atoms"]), r["system"], _label(r)) == g
            ]
            vals.append(v[0] if v else 0.0)
        ax.bar(range(len(groups)), vals, 0.6, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{s}\n{m}\n{lab}" for m, _, s, lab in groups], fontsize=7)
    ax.set_ylabel("µs per atom-step (median per stage)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Per-stage breakdown — {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _cpu_rows(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in rows if r["benchmark"] == "cpu_backend" and r["mode"].endswith("/" + kind)]


def _stages(r: dict) -> dict[str, float]:
    text = (r.get("notes") or "").split("stages_s=", 1)
    if len(text) < 2:
        return {}
    out = {}
    for item in text[1].split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = float(v)
    return out


def plot_cpu_backend(rows: list[dict], device: str, path: str) -> bool:
    sweep = [r for r in _cpu_rows(rows, "sweep") if r.get("median_s")]
    prof = [r for r in _cpu_rows(rows, "profile") if _stages(r)]
    if not sweep and not prof:
        return False
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    lines = defaultdict(list)
    for r in sweep:
        lines[r["implementation"]].append(r)
    for label, rs in sorted(lines.items()):
        rs.sort(key=lambda r: int(r["atoms"]))
        ax.plot(
            [int(r["atoms"]) for r in rs],
            [float(r["ns_per_atom"]) / 1e3 for r in rs],
            marker="o",
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms (periodic water box, r_c = 5)")
    ax.set_ylabel("µs per atom-step (energy + forces, whole call)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("time per atom and step vs size (2L F=128 K=32, fp32)", fontsize=9)
    groups = sorted({(r["system"], r["implementation"]) for r in prof})
    stages: list[str] = []
    for r in prof:
        for k in _stages(r):
            if k not in stages:
                stages.append(k)
    totals = []
    for g in groups:
        r = [r for r in prof if (r["system"], r["implementation"]) == g][0]
        totals.append(float(r["median_s"]) * 1e3)
    bottoms = [0.0] * len(groups)
    for stage in stages:
        vals = []
        for g, tot in zip(groups, totals):
            v = [
                _stages(r).get(stage, 0.0) * 1e3 / tot * 100
                for r in prof
                if (r["system"], r["implementation"]) == g
            ]
            vals.append(v[0] if v else 0.0)
        bx.bar(range(len(groups)), vals, 0.6, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    bx.set_xticks(range(len(groups)))
    bx.set_xticklabels([f"{s}\n{i}\n{t:.0f} ms" for (s, i), t in zip(groups, totals)], fontsize=7)
    bx.set_ylabel("% of one profiled call")
    bx.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    bx.set_title("cpu backend: per-stage time", fontsize=9)
    fig.suptitle(f"cpu backend — {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def cpu_backend_table(rows: list[dict], device: str | None = None) -> str:
    """Markdown: cpu backend vs torchmd-net (same run), memory, error vs float64; ``rows`` of
    one device (named in the heading when given)."""
    total = {(r["implementation"], r["system"]): r for r in _cpu_rows(rows, "total")}
    errs = {(r["implementation"], r["system"]): r for r in _cpu_rows(rows, "error")}
    systems = sorted({s for _, s in total})
    if not any(("torchmd-net", s) in total for s in systems):
        return ""
    out = [
        '\n## The "cpu" backend vs torchmd-net 3.1 (bench/bench_cpu_backend.py)'
        + (f" — {device}" if device else "")
        + "\n",
        "Whole call (neighbour list + energy + forces), 2L F=128 K=32 r_c=5 fp32, threads as "
        "in the row; each implementation in its own process of the same run, timed interleaved "
        "with the others (rows from 2026-11-24 14:36 on; before: one after the other); memory = "
        "the first call's RSS high-water mark above its RSS before (rows before 2026-11-24 "
        "11:12: growth of the process's peak RSS); error = max relative deviation from the "
        "float64 model (energy; forces relative to max |F|).\n",
        "| system | atoms | implementation | ms | torchmd-net ms | speed-up | peak MB | "
        "memory vs torchmd-net | energy err | forces err | date |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in systems:
        peer = total.get(("torchmd-net", s))
        for impl in ("ours-tabulated", "ours-exact"):
            r = total.get((impl, s))
            if not r or not peer or not r.get("median_s"):
                continue
            e = parse_notes(errs[(impl, s)].get("notes", "")) if (impl, s) in errs else {}
            ours_ms, peer_ms = float(r["median_s"]) * 1e3, float(peer["median_s"]) * 1e3
            mem, pmem = float(r["peak_mem_mb"] or 0), float(peer["peak_mem_mb"] or 0)
            # rows since 2026-12-02 say which mode load_model's default (filter_mode="auto") ran
            label = impl + (" (default)" if e.get("auto_filter_mode") == impl[5:] else "")
            out.append(
                f"| {s} | {r['atoms']} | {label} | {ours_ms:.0f} | {peer_ms:.0f} | "
                f"{peer_ms / ours_ms:.1f}x | {mem:.0f} | {mem / max(pmem, 1e-9):.3f}x | "
                f"{e.get('energy_rel_err', '')} | {e.get('forces_rel_err', '')} | "
                f"{r['date'][:16]} |"
            )
    return "\n".join(out) + "\n"


def cpu_backend_devices(csv: str, include_tiny: bool = False) -> list[str]:
    """Devices with cpu_backend rows against torchmd-net, newest run first."""
    newest: dict = {}
    for r in _read_rows(csv, include_tiny):
        if r["benchmark"] == "cpu_backend" and r["implementation"] == "torchmd-net":
            newest[r["device"]] = max(newest.get(r["device"], ""), r["date"])
    return sorted(newest, key=newest.get, reverse=True)


def headline(rows: list[dict], device: str) -> str:
    sp = speedups(rows)
    if not sp:
        return ""
    lines = [
        f"**Device: {device}**, threads = {sp[0]['ours_row']['threads']}, float32, energy + "
        "forces per step, median of rotated inputs (p20-p80 in results.csv). "
        "Ratio = torchmd-net time / our time (> 1: we are faster).",
        "",
        "| model | system | atoms | edges/atom | ours | ours ms | torchmd-net default (Warp) ms "
        "| ratio | torchmd-net pure ms | ratio |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    by = defaultdict(dict)
    for s in sp:
        by[(s["model"], s["atoms"], s["system"], s["ours"])][s["peer"]] = s
    for (model, atoms, system, ours), peers in sorted(by.items()):
        any_s = next(iter(peers.values()))
        o = any_s["ours_row"]
        cells = []
        for peer in ("torchmd-net default (Warp)", "torchmd-net pure PyTorch"):
            s = peers.get(peer)
            cells += (
                [f"{float(s['peer_row']['median_s']) * 1e3:.1f}", f"{s['ratio']:.2f}x"]
                if s
                else ["—", "—"]
            )
        lines.append(
            f"| {model} | {system} | {atoms} | {int(o['edges']) / atoms:.1f} | {ours} "
            f"| {float(o['median_s']) * 1e3:.1f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    for peer in ("torchmd-net default (Warp)", "torchmd-net pure PyTorch"):
        for ours in sorted({s["ours"] for s in sp}):
            rs = [s["ratio"] for s in sp if s["peer"] == peer and s["ours"] == ours]
            if rs:
                gm = math.exp(sum(math.log(r) for r in rs) / len(rs))
                lines.append(
                    f"- {ours} vs {peer}: geometric mean {gm:.2f}x over {len(rs)} cases "
                    f"(range {min(rs):.2f}x to {max(rs):.2f}x)."
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.split("\n")[0])
    p.add_argument("--csv", default=harness.RESULTS_CSV)
    p.add_argument("--out-dir", default=None, help="default: the CSV's folder")
    p.add_argument("--device-name", default=None)
    p.add_argument("--include-tiny", action="store_true", help="also plot --tiny rows (tests)")
    args = p.parse_args(argv)
    out = args.out_dir or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out, exist_ok=True)
    rows, device = load(args.csv, args.device_name, args.include_tiny)
    if not rows:
        print(f"no (non-tiny) rows in {args.csv}: nothing to plot", file=sys.stderr)
        return 0
    made = []
    for name, fn in (
        ("time_per_atom.png", plot_time_per_atom),
        ("speedup.png", plot_speedup),
        ("radius_graph.png", plot_radius_graph),
        ("stages.png", plot_stages),
    ):
        if fn(rows, device, os.path.join(out, name)):
            made.append(name)
    # the cpu backend's plot: the newest host that ran bench_cpu_backend (the reference-backend
    # sweep above may come from another)
    cpu_devices = cpu_backend_devices(args.csv, args.include_tiny)
    cpu_device = device if args.device_name or not cpu_devices else cpu_devices[0]
    cpu_rows = rows if cpu_device == device else load(args.csv, cpu_device, args.include_tiny)[0]
    if plot_cpu_backend(cpu_rows, cpu_device, os.path.join(out, "cpu_backend.png")):
        made.append("cpu_backend.png")
    table = headline(rows, device)
    # the cpu-backend comparison of every device that has one, newest first (the hosts differ:
    # e.g. AVX2 only vs AVX-512, and the ratio with them)
    for dev in cpu_devices:
        table += cpu_backend_table(load(args.csv, dev, args.include_tiny)[0], dev)
    if table:
        with open(os.path.join(out, "HEADLINE.md"), "w") as fh:
            fh.write(
                "# Headline: tensornet_fast vs torchmd-net 3.1\n\n"
                + table
                + "\nPlots: time_per_atom.png, speedup.png, stages.png, cpu_backend.png "
                "(same folder). "
                "Regenerate: `python -m bench.plots` (from results.csv); reproduce the rows "
                "and read where the sweep stops and why: bench/README.md.\n"
            )
        made.append("HEADLINE.md")
    print(f"{device}: wrote {', '.join(made) or 'nothing'} in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
