"""Plotly figures built from the engine's plain per-round records (no torch models, no gradio)."""
