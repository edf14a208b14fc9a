"""Verifying an offered bundle: TUF over MQTT, in a short-lived child process, with a time floor."""
