"""Data in: files read into records (readers, formats), loaded, validated and split (records), converted (convert)."""
