"""Enrolment: a one-time token traded for broker credentials, and reading them back."""
