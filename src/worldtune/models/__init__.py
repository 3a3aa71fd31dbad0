"""Model families: Wan DiT, encoders, and the companion models."""
