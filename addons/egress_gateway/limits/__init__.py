"""Volume limits: requests and bytes per minute, per session and per client address."""
