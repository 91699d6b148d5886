"""Capture clients: webcam / video / recording -> landmarks -> server -> frames."""
