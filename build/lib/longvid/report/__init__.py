"""The report stage: one self-contained HTML page per experiment."""
