"""The demo dataset: drawn people in the competition's layout, generated where no data is configured.

``python -m maskclf.demo --out DIR`` writes one; :func:`generate` is the same from Python.
"""

from maskclf.demo.generate import generate
from maskclf.demo.people import Person, sample_people

__all__ = ["Person", "generate", "sample_people"]
