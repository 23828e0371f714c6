"""ZIP exports: a job's results or a selection of assets as one archive, built in the background."""
