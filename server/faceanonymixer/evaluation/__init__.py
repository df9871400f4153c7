"""Measurements of recognition and protection (ISO/IEC 24745 properties grow here)."""
