"""The ``mav`` command: the live view by default, and subcommands.

``mav [options]`` runs the live view; ``mav maps|compare|serve|replay ...`` run the
other tools.  Every subcommand module exposes ``build_parser()`` and ``run(args)``.
:func:`main` parses, then checks every value against :data:`openmav.cli.validate.TABLE`
before calling ``run``, so a bad flag is refused in milliseconds, before torch is
imported or a model loads.  Errors a user can fix (a refused flag,
:class:`~openmav.errors.OpenMavError`) become one line on stderr and a non-zero
exit code, never a traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import gc
import importlib
import sys

SUBCOMMANDS = {
    "maps": "openmav.cli.maps",
    "compare": "openmav.cli.compare",
    "serve": "openmav.cli.serve",
    "replay": "openmav.cli.replay",
    "scan": "openmav.cli.scan",
    "models": "openmav.cli.models",
    "cache": "openmav.cli.cache",
}
LIVE = "openmav.cli.live"


def _module_for(argv: list[str]) -> tuple[str, list[str], str]:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]], argv[1:], f"mav {argv[0]}"
    return LIVE, argv, "mav"


def one_line_errors(parser) -> None:
    """Make ``parser`` report a bad flag as one line (no usage dump) and exit 2."""

    def error(message):
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error


def main(argv: list[str] | None = None) -> int:
    """Run ``mav`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code, never raises SystemExit."""
    from ..errors import OpenMavError
    from . import validate

    argv = list(sys.argv[1:] if argv is None else argv)
    module_name, rest, prog = _module_for(argv)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            print(f"{prog}: error: this openmav has no '{prog}' command (see mav --help)", file=sys.stderr)
            return 2
        parser = module.build_parser()
        parser.prog = prog
        one_line_errors(parser)
        try:
            args = parser.parse_args(rest)
        except SystemExit as exc:  # --help, --version, or a flag argparse refused (already printed)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        validate.check_args(prog, args)
        code = module.run(args)
        return int(code or 0)
    except OpenMavError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


# the collector's thresholds while ``mav`` runs: a young collection every 20,000 new objects (Python's
# default is 700), an older one every 50 of those, a full one every 10 of those
THRESHOLDS = (20_000, 50, 10)


def entry() -> None:
    """The ``mav`` console script: :func:`main`, then exit.

    Importing torch and transformers and loading a model create some 400,000 objects that live as long as
    the process; with Python's default thresholds the garbage collector went over them about a thousand
    times on the way to the first token, full collections included (a sixth of that time's CPU, about
    1 s of 6 on a busy 2-core machine).  Every command runs with :data:`THRESHOLDS`, which let the young
    generation grow first (35 collections, 0.2 s, to the live view's first token); the live view goes
    further: the collector is paused until its model is loaded, then what is alive is frozen and
    collection resumes (:func:`openmav.cli.live.resume_collector`; no collection before the first
    token).  Garbage in cycles made after that is collected all along.  The objects left at the end
    are moved out of the collector's reach before exiting (``gc.freeze``): the interpreter's last
    collection over them took about a second after the output was complete, while exit handlers and
    module teardown still run."""
    gc.set_threshold(*THRESHOLDS)
    if _module_for(sys.argv[1:])[0] == LIVE:
        gc.disable()  # until the model is loaded (the live view resumes it)
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
