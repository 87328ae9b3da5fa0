"""The audit trail: a hash-chained, insert-only log of every action, and the auditor's viewer."""
