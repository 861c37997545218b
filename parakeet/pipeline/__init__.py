"""Pipeline layer: bytes to transcript (decode, plan long audio, batch, merge). No HTTP framework here."""
