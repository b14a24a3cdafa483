"""Show Me Your Attention's example script, kept so its command lines run as they are written.

    python examples/compare_phrasings.py --mode all
    python examples/compare_phrasings.py --mode custom --prompt1 "The cat sat on the mat" --prompt2 "A cat was sitting on a mat"

It is ``mav compare`` with the same flags (modes ``simple``, ``questions``, ``sentiment``,
``interactive``, ``custom`` and ``all``; ``--model``, ``--output-dir`` and the rest as
``mav compare --help`` lists them): figures and a ``differences.csv`` per mode go to
``outputs/<mode>/``.
"""

import sys

from openmav.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
