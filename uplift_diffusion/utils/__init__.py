"""Small shared helpers with one home each: user-facing errors (:mod:`.errors`), atomic file writes (:mod:`.io`),
image reading (:mod:`.images`), device / dtype choice (:mod:`.device`) and result fingerprints
(:mod:`.fingerprint`). Importing this package imports nothing heavy (no torch), so the CLI stays fast."""
