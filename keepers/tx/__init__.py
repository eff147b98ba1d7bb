"""Transactions we own: states, nonces, fees, submission routes and inclusion tracking."""
