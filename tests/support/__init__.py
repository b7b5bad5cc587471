"""Real helpers the tests start: a recording HTTP proxy, the simulator behind TLS."""
