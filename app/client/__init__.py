"""Clients of the service: code that sends it work from outside, as a user's job would, rather than serving.

`feed` sends a JSON Lines file of labelled examples (`retentive feed`), over HTTP or into the stream.
"""
