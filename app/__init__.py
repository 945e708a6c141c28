"""Entry points: the `easyspec` command line (`cli.py`) and the Gradio dashboard (`dashboard.py`).

What it is not: part of the engine; nothing in `core/` imports from here.
"""
