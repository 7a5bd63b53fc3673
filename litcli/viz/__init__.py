"""Figures: learned DTM offsets (offsets.py)."""
