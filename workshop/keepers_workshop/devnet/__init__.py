"""The local devnet: anvil, the deployed contracts, and (later) keepers and simulated traders."""
