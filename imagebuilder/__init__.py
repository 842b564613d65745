"""The domain: template schema, pipeline planning, store and compute providers. Knows nothing of Functions."""
