"""The ``mav`` command: the live view by default, and subcommands.

``mav [options]`` runs the live view; ``mav maps|compare|serve|replay ...`` run the
other tools.  Every subcommand module exposes ``build_parser()`` and ``run(args)``;
errors a user can fix (:class:`~openmav.errors.OpenMavError`) become one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "maps": "openmav.cli.maps",
    "compare": "openmav.cli.compare",
    "serve": "openmav.cli.serve",
    "replay": "openmav.cli.replay",
    "models": "openmav.cli.models",
    "cache": "openmav.cli.cache",
}
LIVE = "openmav.cli.live"


def _module_for(argv: list[str]) -> tuple[str, list[str], str]:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]], argv[1:], f"mav {argv[0]}"
    return LIVE, argv, "mav"


def main(argv: list[str] | None = None) -> int:
    from ..errors import OpenMavError

    argv = list(sys.argv[1:] if argv is None else argv)
    module_name, rest, prog = _module_for(argv)
    try:
        module = importlib.import_module(module_name)
        parser = module.build_parser()
        parser.prog = prog
        args = parser.parse_args(rest)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
