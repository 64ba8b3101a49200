"""mammoclip.serve."""
