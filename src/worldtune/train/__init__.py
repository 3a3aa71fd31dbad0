"""Training loop pieces: distributed setup, optimisation, run logging."""
