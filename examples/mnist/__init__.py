"""The MNIST study: train, measure, explain the mistakes, improve, check the explanations.

Run ``python -m examples.mnist --data-root DIR --out DIR [--quick] [--seed N]``. Stages:

1. :mod:`.data` loads MNIST once into normalised tensors (batched by indexing, augmented
   on whole batches in torch).
2. :mod:`.models` has the classic small baseline ConvNet and the improved one (BatchNorm,
   global average pooling + linear head, so CAM applies); :mod:`.train` trains and
   measures them (accuracy, per-class accuracy, confusion matrix, curves).
3. :mod:`.study` explains the mistakes with Grad-CAM, compares CAM with Grad-CAM, runs
   the pointing game on translated digits and the cascading parameter-randomisation
   sanity check (with :mod:`camlib.metrics`), and ranks every registered method with
   :func:`camlib.evaluate` (:mod:`.methods`: the leaderboard and the two-digit
   class-discriminative test); :mod:`.report` writes ``report.md`` and ``metrics.json``
   with :mod:`.figures`.
"""
