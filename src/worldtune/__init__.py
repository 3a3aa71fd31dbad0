"""worldtune: pretrained video generators turned into robot world models."""

__version__ = "0.1.0"
