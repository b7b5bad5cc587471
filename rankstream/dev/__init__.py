"""Development helpers for the demo, the tests and the bench: a private Redis, child processes, the example.

Nothing in the runtime (the shared base, the worker, the producer) imports this package.
"""
