"""The local relay: a Flashbots-protocol builder in front of anvil, for the devnet and tests.
(The runtime's relay client, which submits to real relays, is keepers.tx.flashbots.)"""
