"""Helpers shared by the test suite: a real broker, MQTT clients, polling waits.

Import as `tests.support.broker` (tests/ is a package; pytest puts the
repository root on sys.path).
"""
