"""The cloud side of the agent: the MQTT link to the hubs and what keeps requests from being lost.

    breaker.py     CircuitBreaker: closed, open, half-open on consecutive timeouts
    link.py        CloudLink: MQTT 5 session, correlation, retries with the same id, deadlines
    outbox.py      Outbox: SQLite (WAL) for queued requests, their answers, and telemetry
    delivery.py    Delivery: sends the outbox when the cloud is back, records the answers
    telemetry.py   periodic telemetry from the agent's metrics
    calls.py       CloudCall, CloudResult, QueuedCall: what the router and the API see, decoded
    gateway.py     CloudGateway: what the router calls; ties the parts together

Importing this package imports no MQTT client; :mod:`.link` does, when the agent builds one.
"""
