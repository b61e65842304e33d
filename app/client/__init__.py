"""The `tunery` client verbs: files, jobs, models, deployments and predict over the HTTP API."""
