"""WhatsApp Cloud API adapter: webhook parsing (`parse`), Meta's shared signature in `meta`."""
