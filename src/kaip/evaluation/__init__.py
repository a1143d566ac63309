"""Evaluating models: `kaip.evaluation.qa` scores a chat model on a held-out question-answering set."""
