"""The broker side: the Mosquitto process, its users and ACLs, and the fleet MQTT link."""
