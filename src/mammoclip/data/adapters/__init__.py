"""mammoclip.data.adapters."""
