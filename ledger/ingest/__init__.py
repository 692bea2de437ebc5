"""Ingest: readings in over MQTT, screened, settled and sealed; acks and headers out.
Also the city's anchoring of district heads, which seals what arrives the same way."""
