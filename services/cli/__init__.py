"""The ``hvdm`` command line: one module per group of sub-commands, wired together in ``main``."""
