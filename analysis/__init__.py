"""Analysis of finished sweeps: best-result tables and reports."""
