"""The host agent: dials out to a relay and serves its tunnel from a local service."""
