"""Writes. Every action that changes conversation data goes through one of these functions,
whether it comes from the API, the admin, a command or a task (ARCHITECTURE.md, decision 7)."""
