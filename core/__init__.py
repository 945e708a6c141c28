"""EasySpec engine: models, drafting, verification, calibration, tracing and metrics.

This package never imports a UI library (gradio, plotly); `easyspec.app` and
`easyspec.visualizations` build on it, never the other way round.
"""
