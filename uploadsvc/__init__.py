"""uploadsvc: streaming file uploads onto any fsspec storage (local folder, S3, memory)."""
