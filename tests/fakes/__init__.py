"""Stand-ins for providers' HTTP APIs, which no test can reach."""
