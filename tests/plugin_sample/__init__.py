"""A user's project, tested with only the neuroio pytest plugin's fixtures (run by
tests/testing/test_pytest_plugin.py through pytester; not collected by this suite)."""
