"""mammoclip.train."""
