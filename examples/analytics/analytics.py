"""Messages per hour and active users per day, read from a switchboard deployment's Kafka topics.

Every event in switchboard's log is Avro, framed the Confluent way (magic byte 0, the schema's
4-byte id, the Avro body), and any switchboard node serves the schemas at `/registry` in the
Confluent Schema Registry REST shape. So this reads the topics with nothing but Confluent's own
Python client: a `Consumer`, and an `AvroDeserializer` whose `SchemaRegistryClient` points at a
node's `/registry`.

It reads each topic from its beginning up to where it ended when the program started, then
prints what it found and exits: run it again for fresh figures.

    python analytics.py --bootstrap-servers kafka:9092 --registry http://switchboard:8080/registry
"""

import argparse
import json
import sys
import uuid
from collections import Counter, defaultdict

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

TOPICS = ["users", "conversations", "messages", "presence", "calls", "signals"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka brokers, host:port[,…]")
    parser.add_argument("--registry", required=True, help="a node's registry, http://HOST:PORT/registry")
    parser.add_argument(
        "--topic-prefix",
        default="",
        help="the prefix of the deployment's topics: the `prefix` of its `--log kafka://…?prefix=` URL",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the next event before giving up"
    )
    return parser.parse_args(argv)


def deserializer(registry_url, prefix):
    """Reads each event with the latest schema of its topic, whichever version wrote it.

    Subjects follow Confluent's TopicNameStrategy (`messages-value`) on the topic's name without
    the deployment's prefix, which the registry does not know about.
    """

    def subject(ctx, _record_name):
        return ctx.topic[len(prefix) :] + "-" + ctx.field

    client = SchemaRegistryClient({"url": registry_url})
    conf = {"use.latest.version": True, "subject.name.strategy": subject}
    # `return_record_name` makes each payload union come back as (record name, fields).
    return AvroDeserializer(client, conf=conf, return_record_name=True)


def partitions(consumer, prefix, timeout):
    """Every partition of the deployment's topics, with the offset reading stops at."""
    metadata = consumer.list_topics(timeout=timeout)
    found = []
    for topic in TOPICS:
        name = prefix + topic
        if name not in metadata.topics:
            continue
        for partition in metadata.topics[name].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=timeout)
            if high > low:
                found.append((TopicPartition(name, partition, low), high))
    return found


def events(consumer, prefix, timeout):
    """(topic, decoded event) for every event up to the end the topics had when reading began."""
    todo = partitions(consumer, prefix, timeout)
    ends = {(tp.topic, tp.partition): high for tp, high in todo}
    consumer.assign([tp for tp, _ in todo])
    while ends:
        message = consumer.poll(timeout)
        if message is None:
            raise TimeoutError(f"no event for {timeout} s, still expecting {sorted(ends)}")
        if message.error():
            raise RuntimeError(message.error())
        place = (message.topic(), message.partition())
        if place not in ends:
            continue
        yield message
        if message.offset() + 1 >= ends[place]:
            del ends[place]


class Figures:
    """What the events add up to."""

    def __init__(self):
        self.by_type = Counter()
        self.messages_per_hour = Counter()
        self.active_users_per_day = defaultdict(set)

    def add(self, event):
        record, payload = event["payload"]
        kind = record.rsplit(".", 1)[-1]
        # `occurred_at` is a timestamp-millis: the deserializer gives an aware UTC datetime.
        at = event["occurred_at"]
        self.by_type[kind] += 1
        if kind == "MessageSent":
            self.messages_per_hour[at.strftime("%Y-%m-%dT%H:00Z")] += 1
        if event["actor"] is not None:
            self.active_users_per_day[at.strftime("%Y-%m-%d")].add(event["actor"])

    def as_json(self):
        return {
            "events_by_type": dict(sorted(self.by_type.items())),
            "messages_per_hour": dict(sorted(self.messages_per_hour.items())),
            "active_users_per_day": {
                day: len(users) for day, users in sorted(self.active_users_per_day.items())
            },
        }

    def as_text(self):
        figures = self.as_json()
        lines = [f"{sum(self.by_type.values())} events"]
        for title, table in [
            ("messages per hour (UTC)", figures["messages_per_hour"]),
            ("active users per day (UTC)", figures["active_users_per_day"]),
            ("events by type", figures["events_by_type"]),
        ]:
            lines += ["", title]
            lines += [f"  {key}  {value}" for key, value in table.items()] or ["  (none)"]
        return "\n".join(lines)


def main(argv):
    args = parse_args(argv)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            # Partitions are assigned, not shared in a group, and nothing is committed: the
            # group id is only required, and each run reads from the beginning again.
            "group.id": f"switchboard-analytics-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    decode = deserializer(args.registry, args.topic_prefix)
    figures = Figures()
    try:
        for message in events(consumer, args.topic_prefix, args.timeout):
            if message.value() is None:
                continue
            context = SerializationContext(message.topic(), MessageField.VALUE)
            figures.add(decode(message.value(), context))
    finally:
        consumer.close()
    print(json.dumps(figures.as_json()) if args.json else figures.as_text())


if __name__ == "__main__":
    main(sys.argv[1:])
