"""``tensornet-fast bench``: benchmark sweeps. The benchmarks ship with the source tree, not the
package (the package never imports them): this runs ``python -m bench`` in the checkout the
package was installed from (an editable install), and says so when there is none."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def checkout_root() -> str | None:
    """The source checkout holding bench/, or None for an installed (non-editable) package."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isfile(os.path.join(root, "bench", "__main__.py")) else None


def add_arguments_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="arguments of `python -m bench` (a sweep file such as bench/sweeps/cpu.toml, "
        "--help for all); runs in the source checkout",
    )


def run_bench(args: argparse.Namespace) -> int:
    root = checkout_root()
    if root is None:
        print(
            "tensornet-fast bench: the benchmarks ship with the source tree; run "
            "`python -m bench SWEEP.toml` in a checkout of tensornet_fast",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *args.args], cwd=root)
