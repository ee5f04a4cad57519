"""The tests of this provider alone (`azure_text_analytics_analyze`): its parser against the
vendor's examples and the real answers in ../fixtures/, its requests, listings, finish times."""
