"""``python -m bench``: run the benchmark scenarios, print the table, write the JSON.

Every figure is a ratio or a latency measured side by side in the same run, so that a
busy machine moves both sides of a comparison alike. ``--scenario`` runs some only
(repeat it); ``--files``, ``--repeat`` and ``--corpus`` scale them up. Exit code 0 when
the run completed (targets missed or not; ``--strict`` makes a missed target exit 1),
1 when a scenario could not run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from bench.batch_listing import listing_latency
from bench.cancel import cancel_latency
from bench.feed import feed
from bench.options import Options
from bench.peer import peer
from bench.recovery import recovery
from bench.report import Figure, render_table, write_json
from bench.scale import scale, scale_batches
from bench.server_process import chosen_settings
from bench.small_blobs import small_blobs
from bench.throughput import control_plane, throughput
from bench.watch import watch_latency
from server.service.logs import configure_logging, reset_logging
from server.service.settings import SecuritySettings, ServerSettings, UploadLimits

__all__ = ["SCENARIOS", "main", "run"]

Scenario = Callable[[Options], list[Figure]]

SCENARIOS: dict[str, Scenario] = {
    "throughput": throughput,
    "control-plane": control_plane,
    "feed": feed,
    "cancel": cancel_latency,
    "watch": watch_latency,
    "scale": scale,
    "scale-batches": lambda options: [*scale_batches(options), *listing_latency(options)],
    "recovery": recovery,
    "peer": peer,
    "small-blobs": small_blobs,
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable; default all)",
    )
    parser.add_argument("--files", type=int, help="files per run, instead of each default")
    parser.add_argument("--repeat", type=int, help="runs (or pairs of runs) per scenario")
    parser.add_argument("--corpus", type=Path, help="directory of PDFs for throughput and peer")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--setting",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of every service the bench starts, named as in PDFBATCH_NAME "
        "(repeatable), e.g. worker_niceness=0; default the service's own",
    )
    return parser


def _setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    name = name.strip().lower()
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name not in _SETTING_NAMES:
        raise argparse.ArgumentTypeError(
            f"no service setting is called {name!r}; see server/service/settings.py"
        )
    return name, value


# What `pdfbatch serve` reads from PDFBATCH_* variables (the nested models are read on
# their own, under the same prefix).
_SETTING_NAMES = frozenset(
    name
    for model in (ServerSettings, UploadLimits, SecuritySettings)
    for name in model.model_fields
    if name not in ("limits", "security")
)


def _variables(
    parser: argparse.ArgumentParser, chosen: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """The chosen settings as ``PDFBATCH_*`` variables, each value checked as the service
    would check it (the command line is refused at once, not when a server starts)."""
    variables = {f"PDFBATCH_{name.upper()}": value for name, value in chosen}
    with chosen_settings(variables):
        for model in (ServerSettings, UploadLimits, SecuritySettings):
            try:
                model()
            except ValidationError as exc:
                parser.error(f"--setting: {exc}")
    return variables


def run(names: Sequence[str], options: Options, log: Path) -> tuple[list[Figure], list[str]]:
    """Run the scenarios named; their figures, and the names of those that failed."""
    figures: list[Figure] = []
    broken: list[str] = []
    for name in names:
        print(f"running {name}...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            found = SCENARIOS[name](options)
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the rest
            traceback.print_exc()
            broken.append(name)
            found = [Figure(name, "scenario failed", None, "", note=f"{type(exc).__name__}: {exc}")]
        seconds = time.monotonic() - started
        figures += found
        print(f"  {name}: {seconds:.0f} s (service log: {log})", file=sys.stderr, flush=True)
    return figures, broken


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark as the command line says; the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    variables = _variables(parser, args.setting)
    options = Options(
        files=args.files, repeat=args.repeat, corpus=args.corpus, workers=args.workers
    )
    names = args.scenario or list(SCENARIOS)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    log = args.json.with_suffix(".log")
    with log.open("w") as stream:
        # Only the in-process service (the watch scenario) logs here; servers run as
        # child processes write next to their data.
        configure_logging(stream=stream)
        try:
            load_before = os.getloadavg()
            with chosen_settings(variables):
                figures, broken = run(names, options, log)
            load_after = os.getloadavg()
        finally:
            reset_logging()
    print(render_table(figures, markdown=args.markdown))
    settings = {
        "argv": list(sys.argv[1:] if argv is None else argv),
        "scenarios": names,
        "files": args.files,
        "repeat": args.repeat,
        "corpus": str(args.corpus) if args.corpus else None,
        "workers": args.workers,
        "service_settings": dict(args.setting),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    write_json(args.json, figures, settings)
    load = f"1-minute load average {load_before[0]:.1f} -> {load_after[0]:.1f}"
    print(f"\nwritten: {args.json} ({load})")
    if broken:
        return 1
    missed = any(figure.passed is False for figure in figures)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
