"""The clustering REST API (under /api/v1/)."""
