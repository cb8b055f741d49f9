"""Models built in code the way exporters emit them, shared by the test files."""
