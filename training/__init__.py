"""clipalbum training: torch encoders, projection heads, losses, data sets, trainer and recipes."""
