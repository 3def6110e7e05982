"""``--kafka-compression``: the batch codec of a Kafka deployment's producers, as a flag.

The codec is a broker-URL option (``?compression=zstd``, ``HVDM_KAFKA_COMPRESSION``, ``[kafka]
compression`` in the config file) because every process of a deployment takes the same ``--broker``
value; the flag is a shorter way to say it on one command line, and wins over all of them. Readers
do not need it: a consumer decompresses whatever codec a batch names.
"""

from __future__ import annotations

import argparse
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..kafka_engine.settings import COMPRESSIONS


def add_compression_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka-compression",
        choices=COMPRESSIONS,
        default=None,
        help="codec of the record batches written to Kafka (default zstd; overrides the URL's compression=)",
    )


def with_compression(url: str | None, compression: str | None) -> str | None:
    """``url`` with its ``compression`` option set to ``compression`` (unchanged if either is None).

    >>> with_compression("kafka://h:9092?prefix=a&compression=none", "zstd")
    'kafka://h:9092?prefix=a&compression=zstd'
    >>> with_compression("kafka://h:9092", "gzip")
    'kafka://h:9092?compression=gzip'
    """
    if url is None or compression is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "compression"]
    query.append(("compression", compression))
    return f"{parts.scheme}://{parts.netloc}?{urlencode(query)}"
