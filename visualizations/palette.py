"""Colours shared by every figure and by the token colouring: the Okabe-Ito palette.

Okabe & Ito (2008) chose these eight colours to stay distinguishable under the common forms of
colour blindness. Token origins and timeline phases each get one colour; where two meanings must
also survive a greyscale print, the token colouring adds an underline style as a second cue.
What it is not: the dashboard's theme (Gradio's, set in `app/dashboard.py`).
"""
from __future__ import annotations

OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "black": "#000000",
}
GREY = "#999999"
LIGHT_GREY = "#D0D0D0"
DARK_GREY = "#555555"

# Token origins (docs/conventions.md#token-origins). `base` is how vanilla decoding's tokens are shown:
# the engine tags them `bonus` (a bonus after zero drafts), which would mislead a viewer.
ORIGIN_COLOURS = {
    "accepted": OKABE_ITO["bluish_green"],
    "recovered": OKABE_ITO["vermillion"],
    "bonus": OKABE_ITO["blue"],
    "prefill": GREY,
    "base": OKABE_ITO["orange"],
}
ORIGIN_LABELS = {
    "accepted": "accepted draft token",
    "recovered": "recovered (base replaced a rejected draft)",
    "bonus": "bonus (base, after all drafts were accepted)",
    "prefill": "first token (prompt prefill)",
    "base": "base model token (no draft)",
}
ORIGIN_UNDERLINES = {"accepted": "solid", "recovered": "dashed", "bonus": "double", "prefill": "dotted",
                     "base": "solid"}

PHASE_COLOURS = {
    "draft.attn": OKABE_ITO["sky_blue"],
    "draft.mlp": OKABE_ITO["blue"],
    "draft.comm": OKABE_ITO["orange"],
    "verify.comm": OKABE_ITO["yellow"],
    "verify": OKABE_ITO["vermillion"],
    "calibrate": OKABE_ITO["reddish_purple"],
    "sample": OKABE_ITO["bluish_green"],
    "idle": LIGHT_GREY,
    "overhead": DARK_GREY,
}
PHASE_LABELS = {
    "draft.attn": "draft attention",
    "draft.mlp": "draft MLP",
    "draft.comm": "draft all-gather",
    "verify.comm": "verify all-reduce",
    "verify": "verify (base forward)",
    "calibrate": "calibrate (exact draft pass)",
    "sample": "sample / accept",
    "idle": "idle (spare device)",
    "overhead": "overhead",
}

# Series colours for pilot charts (one per calibration policy).
POLICY_COLOURS = {"none": OKABE_ITO["vermillion"], "every-round": OKABE_ITO["blue"],
                  "on-mismatch": OKABE_ITO["bluish_green"]}


def rgba(hex_colour: str, alpha: float) -> str:
    """'#RRGGBB' -> 'rgba(r, g, b, alpha)' (for light token backgrounds)."""
    assert len(hex_colour) == 7 and hex_colour.startswith("#"), hex_colour
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"
