"""The auto-tuner of the layer plan and calibration policy (`tune.py` runs its steps in order)."""
