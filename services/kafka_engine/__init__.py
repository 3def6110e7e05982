"""The distributed deployment: the DM engine as Faust workers over Kafka topics, its gateway backend,
recovery, ticks and the Kafka log reader the audit uses."""
