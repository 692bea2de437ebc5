"""The device side: simulated meters and parking sensors that sign, store and publish readings.

meters (pure simulation models), outbox (durable SQLite queue), identity (keys and
broker credentials on disk), agent (one device's firmware around a paho client),
netloop (one thread driving many clients) and fleet (many devices in one process).
"""
