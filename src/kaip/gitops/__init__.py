"""GitOps: Argo CD Applications synced from local git repositories."""
