"""Model loading: checkpoints into our decoder, the offline pair, quantized drafts, prompt text."""
