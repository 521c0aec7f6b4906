"""Process settings and the brokers.toml schema."""
