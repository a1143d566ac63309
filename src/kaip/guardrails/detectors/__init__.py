"""Detectors: pure functions of text (and, for some, of a conversation) that return scored spans."""
