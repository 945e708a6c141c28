"""Entry points: the `easyspec` command line (and, later, the Gradio dashboard)."""
