"""mammoclip.data."""
