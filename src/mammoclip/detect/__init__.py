"""mammoclip.detect."""
