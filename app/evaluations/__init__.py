"""Evaluations: a model (and optionally a second one to compare) scored on a file."""
