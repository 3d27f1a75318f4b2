"""``python -m examples.mnist``: the whole MNIST study (see :mod:`examples.mnist.study`)."""

from .study import main

raise SystemExit(main())
