"""What a person reads: the dashboard, the report, the export and the per-trial charts."""
