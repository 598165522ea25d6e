"""``python -m tensornet_fast.integrations.lammps build [--force]``: compile the LAMMPS plugin
and print its path; ``path``: print where it is (or would be) built."""

from __future__ import annotations

import argparse
import sys

from . import PluginBuildError, build, plugin_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tensornet_fast.integrations.lammps")
    p.add_argument("action", choices=("build", "path"))
    p.add_argument("--force", action="store_true", help="rebuild even if built")
    args = p.parse_args(argv)
    try:
        print(build(force=args.force) if args.action == "build" else plugin_path())
    except PluginBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
