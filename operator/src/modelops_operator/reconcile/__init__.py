"""Pure reconciliation: spec + stored status + observed state -> `Outcome(status, actions, events)`.

Nothing here talks to the API server or kopf; controllers feed it what they observed and carry out
what it returns.
"""
