"""Queue semantics (Kueue): quotas, flavors, cohorts, borrowing, preemption. Pure: no I/O."""
