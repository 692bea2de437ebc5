"""Who may sign in, and as what: passwords and sign-in throttling."""
