"""The tests of this provider alone (`azure_language_analyze_text`): its parser against the
vendor's examples and the real answers in ../fixtures/, its requests, listings, finish times."""
