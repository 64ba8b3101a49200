"""mammoclip.data.synthetic."""
