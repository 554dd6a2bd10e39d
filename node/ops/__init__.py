"""What an administrator sees and runs: status page, health, metrics, audit trail, logs,
``config check`` and ``config reference``, and the maintenance commands."""
