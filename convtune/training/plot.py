"""The loss curve of a run as a PNG.

matplotlib draws it when installed; otherwise a dependency-free renderer
draws the same curves (no text) so the run directory contract always holds.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Series = Sequence[tuple[float, float]]


def plot_loss(path: Path, train: Series, evals: Series, *, title: str = "") -> str:
    """Write the curve; returns which renderer drew it ("matplotlib" or "basic")."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        _basic_png(path, [(train, (31, 119, 180)), (evals, (255, 127, 14))])
        return "basic"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", color="tab:blue")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return "matplotlib"


def _basic_png(path: Path, series: list[tuple[Series, tuple[int, int, int]]],
               w: int = 640, h: int = 360) -> None:
    pix = bytearray([255] * (w * h * 3))
    pad = 30
    pts = [p for s, _ in series for p in s]

    def put(x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < w and 0 <= y < h:
            i = (y * w + x) * 3
            pix[i:i + 3] = bytes(c)

    for x in range(pad, w - pad):  # axes
        put(x, h - pad, (0, 0, 0))
    for y in range(pad, h - pad + 1):
        put(pad, y, (0, 0, 0))
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        sx = (w - 2 * pad) / ((x1 - x0) or 1)
        sy = (h - 2 * pad) / ((y1 - y0) or 1)

        def xy(p):
            return int(pad + (p[0] - x0) * sx), int(h - pad - (p[1] - y0) * sy)

        for s, color in series:
            prev = None
            for p in s:
                cur = xy(p)
                if prev is not None:
                    n = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1)
                    for k in range(n + 1):
                        put(round(prev[0] + (cur[0] - prev[0]) * k / n),
                            round(prev[1] + (cur[1] - prev[1]) * k / n), color)
                for dx in (-1, 0, 1):
                    for dy in (-1, 0, 1):
                        put(cur[0] + dx, cur[1] + dy, color)
                prev = cur
    raw = b"".join(b"\x00" + bytes(pix[y * w * 3:(y + 1) * w * 3]) for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)
