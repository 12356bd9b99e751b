"""Duplicate clusters: groups of stored questions that the service's own rule calls the same."""
