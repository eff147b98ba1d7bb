"""Chain access: compiled contract bindings and revert decoding."""
