"""The edgefleet control plane: API, signed repository, fleet MQTT link, rollouts, CLI."""
