"""The sizes a validation runs at: parsed from ``97x129,333x517``, or spread across an engine's profile.

Validators that check one size miss the bugs that only show away from it (skip crops at sizes that
are not multiples of the stride, dynamic-shape kernels), so the spread covers the profile's min and
max, odd, prime, non-multiples of 32, extreme aspect ratios and seeded random sizes.
"""

from __future__ import annotations

import numpy as np

from ..backends.profile import Profile
from ..errors import FcnDeployError


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"97x129,333x517"`` -> ``[(97, 129), (333, 517)]`` (height x width)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise FcnDeployError(f"bad size {item!r}: write HEIGHTxWIDTH, e.g. 97x129", options=("sizes",)) from None
        if h <= 0 or w <= 0:
            raise FcnDeployError(f"bad size {item!r}: height and width must be positive", options=("sizes",))
        sizes.append((h, w))
    if not sizes:
        raise FcnDeployError("no sizes given: write e.g. 97x129,333x517", options=("sizes",))
    return sizes


def spread_sizes(profile: Profile, random_sizes: int = 4, seed: int = 0, cap: int | None = None) -> list[tuple[int, int]]:
    """A spread of (height, width) inside ``profile``: min, max, opt, odd, prime, non-multiples of
    32, extreme aspect ratios, and ``random_sizes`` seeded random sizes.  ``cap`` bounds the largest
    side (to keep CPU checks quick) without dropping the profile's min."""
    (_, h_min, w_min), (_, h_opt, w_opt), (_, h_max, w_max) = profile.min, profile.opt, profile.max
    if cap:
        h_max, w_max = min(h_max, max(cap, h_min)), min(w_max, max(cap, w_min))
    candidates = [
        (h_min, w_min),
        (h_max, w_max),
        (h_opt, w_opt),
        (97, 129),  # odd
        (127, 131),  # primes
        (211, 173),  # primes, landscape
        (255, 257),  # just off a multiple of 32 on both sides
        (h_min, min(w_max, 8 * w_min + 5)),  # extreme aspect: wide
        (min(h_max, 6 * h_min + 7), w_min),  # extreme aspect: tall
        (333, 517),
    ]
    rng = np.random.default_rng(seed)
    for _ in range(random_sizes):
        candidates.append((int(rng.integers(h_min, h_max + 1)), int(rng.integers(w_min, w_max + 1))))
    sizes: list[tuple[int, int]] = []
    for h, w in candidates:
        h, w = min(max(h, h_min), h_max), min(max(w, w_min), w_max)
        if (h, w) not in sizes:
            sizes.append((h, w))
    return sizes
