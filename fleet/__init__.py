"""The fleet side (`ecosorter fleet`, extra `fleet`): many bins seen and updated through the MQTT
broker they already speak. Nothing here runs on a bin; nothing here is a server of its own
(the broker is the distribution engine; SQLite keeps a rollout's state on the workstation)."""
