"""``python -m examples.shortcut``: train with and without a map penalty (see
:mod:`examples.shortcut.run`)."""

from .run import main

raise SystemExit(main())
