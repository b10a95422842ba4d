"""DrivenData Live: a real-time dashboard of a streaming sessions table."""
