"""``tensornet-fast`` command line (see ``tensornet-fast --help``)."""

from .main import DEFAULT_MOLECULES, SUBCOMMANDS, build_parser, main

__all__ = ["DEFAULT_MOLECULES", "SUBCOMMANDS", "build_parser", "main"]
