"""The auto-tuner of the layer plan and calibration policy."""
