"""The tansu broker fixture of the Kafka tests, for the rebalancer's Kafka test."""

from tests.kafka.conftest import broker, prefix

__all__ = ["broker", "prefix"]
