"""Which fonts Chromium drew an element's text with, and which installed fonts cover Japanese."""
from __future__ import annotations

import subprocess


def cjk_families() -> set[str]:
    """Font families that fontconfig says cover Japanese (`fc-list :lang=ja`)."""
    out = subprocess.run(["fc-list", ":lang=ja", "family"], capture_output=True, text=True).stdout
    return {name.strip() for line in out.splitlines() for name in line.split(",")}


def platform_fonts(page, selector: str) -> dict[str, int]:
    """family -> glyphs drawn, for the first element matching `selector` (DevTools
    CSS.getPlatformFontsForNode: the fonts actually used, fallbacks included)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    assert node, f"no element {selector}"
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cdp.detach()
    return {f["familyName"]: f["glyphCount"] for f in fonts}


def assert_cjk_drawn(page, selector: str) -> None:
    """Every CJK character of the element's own text was drawn with a font that covers Japanese."""
    cjk = cjk_families()
    assert cjk, "no font covers Japanese: apt-get install fonts-noto-cjk"
    text = page.evaluate("(s) => [...document.querySelector(s).childNodes].filter(n => n.nodeType === 3)"
                         ".map(n => n.textContent).join('')", selector)
    chars = sum(1 for ch in text if ord(ch) >= 0x2E80)
    used = platform_fonts(page, selector)
    assert chars > 0 and sum(n for name, n in used.items() if name in cjk) >= chars, (text, used, cjk)
