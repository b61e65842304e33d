"""What image and audio classification share: zip uploads (archive.py, kind.py), and, in
the worker's half, the classifier training around a processor (training.py)."""
