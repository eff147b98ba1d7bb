"""High availability: leader leases with fencing tokens, and the elector replicas run."""
