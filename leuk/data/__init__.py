"""Data: sources (image folders, synthetic images), leakage-safe splits, the decode-once cache and
the LightningDataModule that ties them together."""
