"""more-search (not built yet)."""
from __future__ import annotations

import argparse
import sys

from . import run_cli


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="more-search", description="more-search is not built yet.")
    parser.parse_args(argv)
    print("more-search is not built yet", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
