"""Small shared helpers with one home each: user-facing errors (:mod:`.errors`), atomic file writes (:mod:`.io`),
image reading (:mod:`.images`), device / dtype choice (:mod:`.device`), result fingerprints (:mod:`.fingerprint`),
dtype names (:mod:`.dtypes`), Markdown tables (:mod:`.tables`), image tensor helpers (:mod:`.image_ops`:
ImageNet normalisation, the reference's bilinear resize, image <-> tensor, the one float -> uint8 rule), lazy package
exports (:mod:`.lazy`), old names kept until a named version (:mod:`.deprecation`) and the launcher of
``--num-processes`` (:mod:`.launch`). Importing this package imports nothing heavy (no torch), so the CLI stays fast."""
