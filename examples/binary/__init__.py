"""The binary-classifier example: a CNN with ONE logit, explained for both classes.

Run ``python -m examples.binary --out DIR [--quick]`` (``make binary``). It needs the
``examples`` extra for scikit-image, whose wheel ships ``lfw_subset`` (100 faces and 100
non-faces, 25 x 25 greyscale). A small CNN with a single logit (face vs not a face, the
shape of many medical and industrial models) trains in seconds on a seeded split; camlib
explains class 1 (``targets=1``: the logit) and class 0 (``targets=0``: minus the logit)
for every held-out image. :mod:`.run` does the work, :mod:`.report` writes ``report.md``,
its figures and ``metrics.json``.
"""
