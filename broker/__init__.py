"""Mosquitto and MQTT: the broker's config and process, its logins and ACLs, certificates,
and the MQTT client code devices, ingest and witnesses share (broker/mqtt/)."""
