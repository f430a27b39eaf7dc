"""Same seed, same bytes: the method contract refactor (issue #11) changes no result.

The hashes were recorded on main at 58d412e (before the refactor) with `python -m tests.golden_setup`;
a deliberate change of an algorithm must update them in the same commit and say why.
"""
from __future__ import annotations

from tests.golden_setup import hashes

GOLDEN = {
    "random": {
        "images": "ba31a0dab36bc45a",
        "labels": "74ca81d173c48cae"
    },
    "rded": {
        "images": "23c04c0d56d09351",
        "labels": "b858be1d6dd8c053"
    },
    "lic": {
        "images": "959debda53370df1",
        "labels": "b858be1d6dd8c053",
        "soft.region_soft": "5234b7294319679d",
        "soft.soft": "69d600a3bee9b031"
    },
    "herding": {
        "images": "cb97a954f01c9385",
        "labels": "74ca81d173c48cae"
    },
    "cad-prune": {
        "images": "b551282a83934a93",
        "labels": "74ca81d173c48cae"
    },
    "evaluate": {
        "accs": [
            "0.500000",
            "0.455556"
        ]
    }
}


def test_same_seed_same_bytes_and_accuracies():
    assert hashes() == GOLDEN
