"""Distributed training on the local executor: the launcher's decisions (`launch`) and the checkpoint API that
training code uses to survive failures and preemption (`checkpoint`)."""
