"""Talking MQTT: TLS, client ids the broker admits, sessions, a lean subscriber and the wire format."""
