"""The ``cloudseg`` command.

Every subcommand exits 0 on success and non-zero with one line on standard error that
says what is wrong. Progress goes to standard error, results to standard output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from ._version import __version__
from .errors import CloudsegError

logger = logging.getLogger("cloudseg")

Handler = Callable[[argparse.Namespace], int]


def _cmd_info(args: argparse.Namespace) -> int:
    """Print versions and the device ``--device auto`` would use."""
    from .environment import environment_report

    report = environment_report()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with all subcommands.

    Returns:
        The parser; each subparser sets ``handler`` to the function that runs it.
    """
    parser = argparse.ArgumentParser(
        prog="cloudseg",
        description="Cloud and cloud-shadow segmentation of Sentinel-2 imagery.",
    )
    parser.add_argument("--version", action="version", version=f"cloudseg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser(
        "info",
        help="versions, GPU and onnxruntime providers",
        description="Show package versions and which device is used.",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_cmd_info)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cloudseg`` command.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
        The exit status: 0 on success, 1 on a reported error, 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CloudsegError as exc:
        print(f"cloudseg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cloudseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
