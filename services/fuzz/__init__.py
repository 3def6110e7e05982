"""Adversarial input generation for the engine: random bytes and hostile message sequences."""
