"""Evaluations: the runner (claim, child, lease, record) and the torch child that scores."""
