"""Policy directories: parse YAML (keeping line numbers), validate strictly, compile once."""
