"""Workload kinds and how they plug into queues (the job framework)."""
