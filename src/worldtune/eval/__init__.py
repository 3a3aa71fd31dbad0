"""Evaluation: image and video metrics, and the reports every `worldtune eval <system>` writes."""
