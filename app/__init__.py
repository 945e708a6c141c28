"""Entry points: the `easyspec` command line (`cli.py`) and the Gradio dashboard (`dashboard.py`)."""
