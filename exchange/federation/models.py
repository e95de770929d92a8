"""Federation models (SyncJob)."""
