"""Labeled data stores: Zarr + STAC on a folder or S3, ingestion, reading and reports."""
