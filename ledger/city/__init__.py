"""A city on this machine: the demo data, `cityledger up`, its supervisor, and systemd units for a server."""
