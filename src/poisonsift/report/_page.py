"""What every report page shares: its style, the image check the browser test reads, PNG figures."""

from __future__ import annotations

from pathlib import Path

from poisonsift.utils import atomic_write_bytes

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.src{text-align:left;color:#555}
tr.ours td{font-weight:600}tr.diff td{color:#777;font-size:.85em}
.pos{color:#1a7f37}.neg{color:#c62828}
img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}
"""

CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(broken));
});
"""


def savefig(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it.

    The PNG is quantised to a 256-colour palette (Pillow, matplotlib's own dependency): a plot has
    few colours, and the file is a third of the RGBA one (a 4-panel scatter: 298 -> 97 kB), so a
    published report with every table's figures stays small.
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    buf = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="png", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
