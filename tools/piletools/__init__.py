"""piletools: installer and technician tools (firmware build, console client, verifier, ...)."""
