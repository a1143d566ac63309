"""Controller runtime: work queues, the reconcile loop, the manager, events and conditions."""
