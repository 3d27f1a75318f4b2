"""A worked example of training on differentiable maps: MNIST with a shortcut.

Run ``python -m examples.shortcut --data-root DIR --out DIR [--quick] [--seed N]``; see
:mod:`examples.shortcut.run` for what it does and ``docs/tutorial_shortcut.md`` for the
write-up.
"""
