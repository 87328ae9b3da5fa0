"""Administration: users, certificate bindings, sessions (`flask --app webapp ...` commands)."""
