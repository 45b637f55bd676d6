"""Device-facing servers: TCP (and TLS) line protocol -> Kafka."""
