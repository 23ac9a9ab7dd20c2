"""Labelling: raw texts answered by a teacher model (label, teacher), personal data masked (redact), a diverse choice of records (select)."""
