"""`python -m modelops_trainer.prepare`: build a dataset version from image sources.

Runs the same on a laptop and in the Dataset's Job. The result is a content-addressed dataset
version under the config's output URI, a report of every dropped image beside it, and a JSON
summary in the termination message (what the operator turns into the Dataset's status).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from modelops_trainer.errors import TrainerError
from modelops_trainer.prepare import pipeline
from modelops_trainer.prepare.config import CONFIG_ENV, load_config
from modelops_trainer.reporting import TERMINATION_LIMIT, progress, setup_logging

log = logging.getLogger("modelops_trainer.prepare")

#: The variable the operator sets on the Job (`json`); `--log-format` wins over it.
LOG_FORMAT_ENV = "MODELOPS_LOG_FORMAT"
LOG_FORMATS = ("auto", "json", "text")

EPILOG = f"""
The config (JSON, contract modelops.dev/prepare-config/v1) comes from --config or ${CONFIG_ENV}:

  {{"dataset": {{"name": "digits", "namespace": "default"}},
   "sources": [{{"uri": "file:///data/digits", "format": "imageFolder"}}],
   "preprocessing": {{"imageSize": 32, "format": "png"}},
   "split": {{"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0}},
   "output": {{"uri": "file:///data/datasets/digits"}}}}

Sources: imageFolder (root/<class>/<image>), archive (.tar[.gz|.bz2|.xz] or .zip of one), csv or
jsonl manifests of (uri, label) rows; local paths or file://, s3:// and http(s):// URIs (HTTP follows
up to 5 redirects, never from https to http; gs:// and Azure are not supported). Other
fields (cleaning, preprocessing, split, augmentation, classes) are the Dataset spec's, with its
defaults. Exit status: 0 done, 1 the data cannot be prepared (reason in the summary), 2 bad config.
"""


def summary(result: pipeline.Result) -> dict[str, Any]:
    """The termination message: the version and its counts, shortened to fit 4 KiB."""
    v = result.version
    splits = {name: {"total": entry.count, "perClass": entry.per_class} for name, entry in v.manifest.splits.items()}
    doc: dict[str, Any] = {
        "ok": True,
        "version": v.version,
        "digest": v.digest,
        "uri": v.uri,
        "images": sum(e.count for e in v.manifest.splits.values()),
        "classes": len(v.manifest.classes),
        "splits": splits,
        "dropped": dict(result.dropped),
        "report": result.report_uri,
    }
    if result.missing:  # a split without a class: shown by the operator as a condition
        doc["missing"] = {name: classes[:20] for name, classes in result.missing.items()}
    if len(json.dumps(doc)) >= TERMINATION_LIMIT:  # many classes: per-class counts stay in the manifest
        doc["splits"] = {name: {"total": s["total"]} for name, s in splits.items()}
    return doc


def write_message(path: str, doc: dict[str, Any]) -> None:
    if not path:
        return
    try:
        Path(path).write_text(json.dumps(doc, separators=(",", ":"))[: TERMINATION_LIMIT - 1])
    except OSError:
        log.debug("no termination message written to %s", path)


def parse_args(argv: list[str] | None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The command line; `--log-format` defaults to `$MODELOPS_LOG_FORMAT`, then `auto`."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m modelops_trainer.prepare",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help=f"the config file (default: ${CONFIG_ENV})")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help=f"text with a progress bar on a terminal, JSON lines otherwise (default: ${LOG_FORMAT_ENV}, else auto)",
    )
    parser.add_argument(
        "--termination-log",
        default="/dev/termination-log",
        help="where the JSON summary goes (default: %(default)s; skipped when not writable)",
    )
    args = parser.parse_args(argv)
    if args.log_format is None:
        args.log_format = env.get(LOG_FORMAT_ENV) or "auto"
        if args.log_format not in LOG_FORMATS:
            parser.error(f"${LOG_FORMAT_ENV}={args.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bars = setup_logging(args.log_format, rank=0)

    def bar(items: Iterable[Any], total: int) -> Iterable[Any]:
        return progress(items, enabled=bars, total=total, desc="prepare")

    try:
        config = load_config(args.config)
        result = pipeline.run(config, progress=bar)
    except TrainerError as e:
        log.error("%s: %s", e.reason, e)
        write_message(args.termination_log, {"ok": False, "reason": e.reason, "message": str(e)})
        return e.exit_code
    except Exception as e:  # a bug, or a failure no rule foresaw: still say so where the operator looks
        write_message(
            args.termination_log, {"ok": False, "reason": "InternalError", "message": f"{type(e).__name__}: {e}"}
        )
        raise
    doc = summary(result)
    write_message(args.termination_log, doc)
    log.info(
        "dataset version %s: %d images, %d classes, dropped %s",
        doc["version"],
        doc["images"],
        doc["classes"],
        doc["dropped"] or "none",
    )
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
