"""What a run shows while and after it works: live progress, result tables, reading thoughts."""
