"""Small helpers shared across worldtune."""
