"""Guest connections: VMBus-framed DM messages in, inbox records out; outbox records back as frames."""
