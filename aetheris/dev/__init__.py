"""The embedded development stack: Apache Kafka (or Tansu) and PostgreSQL, no servers to install."""
