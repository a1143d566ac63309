"""The resource model: envelope, kinds registry, schemas and validation."""
