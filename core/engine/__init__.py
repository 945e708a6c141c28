"""The engine: one generation's loop and everything a round is made of (decoder, drafting plan, sampling, trees, records, tracing, monitoring)."""
