"""Sharing adapters and experiments through DVC remotes, tested against real servers on 127.0.0.1.

See docs/sharing.md for the workflow these tests check, and conftest.py for the servers.
"""
