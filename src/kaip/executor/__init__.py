"""Workload execution: the local process executor (the embedded default's kubelet)."""
