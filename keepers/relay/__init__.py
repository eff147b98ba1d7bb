"""The local relay: a Flashbots-protocol builder in front of anvil, for the devnet and tests."""
