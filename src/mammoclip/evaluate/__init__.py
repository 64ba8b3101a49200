"""mammoclip.evaluate."""
