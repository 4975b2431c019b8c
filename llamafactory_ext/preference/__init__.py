"""The preference round after SFT: pairs from the tuned model's failures (lfx pairs)."""
