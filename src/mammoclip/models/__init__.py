"""mammoclip.models."""
