"""The keeper engine: strategy interface, plugin discovery, containment, and the keeper loop."""
