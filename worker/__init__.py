"""The worker: runs ranking jobs from the RQ queue and publishes each item the moment it parses."""
