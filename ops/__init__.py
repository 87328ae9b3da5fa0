"""The watchdog and log review for the whole server (`python -m ops.watch`).

Close all doors, open a few, and closely watch the ones you opened: every check compares the server
against a baseline the admin approved, and anything new or wrong becomes a named alert in the web app's
outbox, which the web app's mailer sends as a bare notification ("check the server").
"""
