"""The HTTP application: resource API, auth, metrics."""
