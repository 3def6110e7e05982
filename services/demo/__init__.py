"""The scripted demo story, for any deployment: one host interface, one loop, one progress table.

``hvdm run`` (embedded, SQLite) and ``hvdm run --broker`` (Kafka) tell the same story per VM:
handshake, shrink, hot-add past boot, shrink, reboot, grow. What differs is only how a deployment
submits inputs and reads states back, which is what ``DemoHost`` names; everything else lives here
once, so neither deployment imports the other.
"""
