"""``python -m examples.binary``: the binary-classifier example (see :mod:`examples.binary.run`)."""

from .run import main

raise SystemExit(main())
