"""Headless Chromium as a reader of report.html: every image decoded, the page not blank.

Used by the report tests and by CI (`python -m tests.browser runs/demo/report.html` checks the demo's page
after `make demo`). Chromium is the Debian package that `make test` / .ci/browser install when missing.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Injected into a copy of the page (the report itself has no script): after load, write every image's
# naturalWidth (0 when it failed to decode) into the DOM, which --dump-dom then prints.
CHECK_SCRIPT = ("<script>window.addEventListener('load',function(){var r=[];for(var i=0;i<document.images.length;"
                "i++){var m=document.images[i];r.push(m.complete&&m.naturalWidth>0?m.naturalWidth:0);}"
                "var p=document.createElement('pre');p.id='imgcheck';p.textContent=JSON.stringify(r);"
                "document.body.appendChild(p);});</script>")


def chromium() -> str:
    """The headless browser's executable; a missing one is named with its install command."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise FileNotFoundError("headless Chromium not found: `apt-get install -y chromium chromium-driver` "
                                "(`make test` and .ci/run do this via .ci/browser)")
    return exe


def _browser(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:  # a fresh, empty profile every call
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                              capture_output=True, text=True, timeout=120)


def image_widths(page: Path) -> List[int]:
    """naturalWidth of every <img> of `page` as Chromium decoded it (0 = broken)."""
    probe = page.with_name(page.stem + ".check.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    out = _browser(probe, "--virtual-time-budget=10000", "--dump-dom").stdout
    m = re.search(r'<pre id="imgcheck">([^<]*)</pre>', out)
    assert m, f"the check script did not run; chromium printed: {out[-500:]}"
    return json.loads(m.group(1))


def screenshot(page: Path, width: int = 1300, height: int = 2400) -> np.ndarray:
    """The page as Chromium draws it, H×W×3 uint8."""
    shot = page.with_name(page.stem + ".png")
    _browser(page, f"--screenshot={shot}", f"--window-size={width},{height}")
    assert shot.is_file(), "chromium wrote no screenshot"
    return np.asarray(Image.open(shot).convert("RGB"))


def check_page(page: Path, min_images: int = 1) -> str:
    """Raise AssertionError unless `page` renders: ≥ min_images images, all decoded, a non-blank screenshot."""
    widths = image_widths(page)
    assert len(widths) >= min_images and all(w > 0 for w in widths), f"{page}: image widths {widths}"
    shot = screenshot(page)
    non_white = float((shot.min(axis=-1) < 240).mean())
    assert non_white > 0.05, f"{page}: the screenshot is {non_white:.1%} non-white (blank page?)"
    return f"{page}: {len(widths)} images decoded, screenshot {non_white:.0%} non-white"


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["runs/demo/report.html"]:
        path = Path(arg).resolve()
        if not path.is_file():
            sys.exit(f"{arg}: no such report")
        print(check_page(path, min_images=3))
