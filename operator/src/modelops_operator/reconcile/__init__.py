"""Pure reconciliation: spec + observed state -> the status (and, later, children) it should have.

Nothing here talks to the API server or kopf; handlers feed it what they observed and carry out
what it returns.
"""
