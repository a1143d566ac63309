"""Kaip: a Kubernetes-native AI platform that runs on one machine with nothing else installed."""

__version__ = "0.1.0"
