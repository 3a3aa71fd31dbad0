"""Data loading for worldtune: video IO and datasets."""
