"""Leaks, tampering, dead devices, hostile traffic: the detectors, their queries, the scan, investigations."""
