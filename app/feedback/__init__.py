"""Agents' feedback: a customer question and a stored question, marked duplicate or not."""
