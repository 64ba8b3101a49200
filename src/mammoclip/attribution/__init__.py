"""mammoclip.attribution."""
