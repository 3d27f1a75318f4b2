"""``python -m camlib ...`` is the ``camlib`` command (also under ``torchrun -m camlib``)."""

from .cli import main

raise SystemExit(main())
