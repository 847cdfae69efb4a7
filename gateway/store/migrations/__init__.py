"""The PostgreSQL store's versioned migrations, `NNNN_name.sql` (see `gateway.store.migrate`)."""
