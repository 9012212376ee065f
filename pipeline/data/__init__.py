"""Data: sources fetched and verified, image files read, split files written and read."""
