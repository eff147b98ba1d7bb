"""Built-in strategy plugins, registered through the `keepers.strategies` entry point group."""
