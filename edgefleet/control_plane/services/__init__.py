"""Service functions: the control plane's operations, called by routes and the MQTT link."""
