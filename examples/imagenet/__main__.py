"""``python -m examples.imagenet``: the ImageNet example (see :mod:`examples.imagenet.run`)."""

from .run import main

raise SystemExit(main())
