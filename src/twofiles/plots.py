"""Figures to files: the one way any part of twofiles turns a matplotlib figure into a PNG.

What it owns: `save_png` (tight layout, PNG bytes in memory, an atomic write, the figure
closed). It sits at the bottom of the package so that training, evaluation and the arena can all
draw without importing one another. What it leaves to others: what each plot shows
(train/plots.py for loss curves, eval/report.py for run comparisons, arena/ratings.py for the
leaderboard).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from twofiles.paths import atomic_write_bytes


def png_bytes(fig: Any, *, dpi: int = 110) -> bytes:
    """`fig` (a matplotlib Figure) as PNG bytes, the figure closed (a long run drawing many
    figures never keeps them all open)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig: Any, png_path: str | Path, *, dpi: int = 110) -> Path:
    """Write `fig` as a PNG, atomically, and close it: a reader never sees half a plot."""
    atomic_write_bytes(png_path, png_bytes(fig, dpi=dpi))
    return Path(png_path)


__all__ = ["png_bytes", "save_png"]
