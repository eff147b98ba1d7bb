"""The development workshop: what builds, runs and tests keepers on one machine, kept out of
the runtime package (and so out of the production image).

- `keepers_workshop.devnet`: anvil, the platform's deployment, the keeper cluster, simulated
  traders and market, the referee, the live view (`keepers devnet`).
- `keepers_workshop.relay`: the local Flashbots-protocol relay in front of anvil (`keepers relay`);
  the runtime's relay *client* is `keepers.tx.flashbots`.
- `keepers_workshop.replay`: a strategy over recorded history on anvil (`keepers replay`).
- `keepers_workshop.testing`: the devnet harness and the pytest plugin (`keepers_devnet` fixture).
- `keepers_workshop.commands`: those subcommands, registered under `keepers.commands`.

Importing this package imports nothing else: pytest loads the plugin into every session.
"""
