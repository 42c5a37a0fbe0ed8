"""``python -m modelops_server --help``: the inference server's command line."""

from __future__ import annotations

import sys

from modelops_server.config import load_settings
from modelops_server.logs import configure_logging
from modelops_server.server import run


def main(argv: list[str] | None = None) -> int:
    """Parse flags and environment, configure logging, serve until SIGTERM."""
    settings = load_settings(argv)
    configure_logging(settings.log_format, settings.log_level)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
