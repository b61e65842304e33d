"""The `tunery` client: files, jobs, models, deployments and predict over the HTTP API.

Its own distribution (tunery-client, tunery_client/pyproject.toml): it needs httpx and
PyYAML, imports nothing of the server, and installs without torch.
"""
