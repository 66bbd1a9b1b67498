"""``python -m bench`` / ``make bench``: online, batch, activation, capture, promotion and Spark
benchmarks.

One workspace and one model serve every part (Spark adds a random forest); the results go to
``online.json``, ``batch.json``, ``activation.json``, ``capture.json``, ``promotion.json``,
``spark.json`` and the
markdown table ``README-table.md``, all from this run (``--out``, default ``bench/results``;
``--quick`` writes to
``outputs/bench-quick`` unless ``--out`` says otherwise).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from typing import Any

from bench import activation, batch, capture, online, promotion, spark
from bench.common import (
    add_common_arguments,
    configure_logging,
    machine_info,
    output_dir,
    write_json,
)
from bench.report import render
from bench.workspace import BenchPart, Workspace

log = logging.getLogger("bench")

PARTS: dict[str, BenchPart] = {
    "online": online.run,
    "batch": batch.run,
    "activation": activation.run,
    "capture": capture.run,
    "promotion": promotion.run,
    "spark": spark.run,
}
TABLE = "README-table.md"


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts; exit 1 with one line when a part fails."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    online.add_arguments(parser)
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default {','.join(PARTS)})",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    configure_logging()
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    docs: dict[str, dict[str, Any]] = {}
    out = output_dir(args)
    try:
        with Workspace(args.workdir) as ws:
            model = ws.prepare_model(args.family)
            for part in parts:
                part_started = time.perf_counter()
                log.info("--- %s ---", part)
                plan = online.plan_from_args(args) if part == "online" else None
                document = PARTS[part](ws, model, args.quick, args.workers, plan)
                document.update(
                    machine=machine_info(),
                    quick=args.quick,
                    command=command,
                    elapsed_s=round(time.perf_counter() - part_started, 1),
                )
                docs[part] = document
                write_json(out / f"{part}.json", document)
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    elapsed = round(time.perf_counter() - started, 1)
    table = render(docs, command.strip()) + f"\nWhole run: {elapsed:.0f} s.\n"
    (out / TABLE).write_text(table, encoding="utf-8")
    log.info("wrote %s in %.0fs", ", ".join(f"{p}.json" for p in docs) + f", {TABLE}", elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
