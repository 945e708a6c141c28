"""The multi-device runtime: ranks on torch.distributed and live device readings."""
