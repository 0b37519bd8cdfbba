"""Uses the Python SDK generated from openapi/tidelog.json against a live broker.

Run by tests/openapi_tools.rs as: python sdk_smoke.py SDK_PARENT_DIR BASE_URL GROUPS(yes|no)
SDK_PARENT_DIR holds the generated package `tidelog_client`. Exits non-zero on any mismatch.
"""

import sys

sys.path.insert(0, sys.argv[1])
BASE_URL = sys.argv[2]
GROUPS = sys.argv[3] == "yes"

from tidelog_client import Client  # noqa: E402
from tidelog_client.api.records import fetch_records, produce  # noqa: E402
from tidelog_client.api.topics import create_topic, describe_topic  # noqa: E402
from tidelog_client.models import (  # noqa: E402
    CreateTopicRequest,
    FetchResponse,
    ProduceRequest,
    ProduceResponse,
    ProduceRecord,
    Problem,
    TopicDescription,
)
from tidelog_client.types import File  # noqa: E402
import io  # noqa: E402


def expect(value, kind, what):
    if not isinstance(value, kind):
        raise SystemExit(f"{what}: expected {kind.__name__}, got {value!r}")
    return value


client = Client(base_url=BASE_URL, raise_on_unexpected_status=True, timeout=30.0)

created = create_topic.sync(client=client, body=CreateTopicRequest(name="sdk-orders", partitions=2))
created = expect(created, TopicDescription, "create topic")
assert created.name == "sdk-orders" and len(created.partitions) == 2, created

again = create_topic.sync(client=client, body=CreateTopicRequest(name="sdk-orders"))
again = expect(again, Problem, "create the topic again")
assert again.status == 409 and again.code == "topic_exists", again

records = [ProduceRecord(key=f"user-{i}", value={"n": i}, partition=i % 2) for i in range(6)]
produced = produce.sync("sdk-orders", client=client, body=ProduceRequest(records=records))
produced = expect(produced, ProduceResponse, "produce JSON")
assert produced.durability.value == "fsync", produced
assert [(o.partition, o.offset) for o in produced.offsets] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]

binary = produce.sync(
    "sdk-orders",
    client=client,
    body=File(payload=io.BytesIO(b"\x00\x01\xff"), mime_type="application/octet-stream"),
    partition=0,
    key="raw",
)
binary = expect(binary, ProduceResponse, "produce octet-stream")
assert [(o.partition, o.offset) for o in binary.offsets] == [(0, 3)], binary

fetched = fetch_records.sync("sdk-orders", 0, client=client, offset="earliest", max_records=10)
fetched = expect(fetched, FetchResponse, "fetch")
values = [r.value for r in fetched.records[:3]]
assert values == [{"n": 0}, {"n": 2}, {"n": 4}], values
assert fetched.records[-1].value_b64 == "AAH/", fetched.records[-1]
assert fetched.next_offset == 4 and fetched.high_watermark == 4, fetched

out_of_range = fetch_records.sync("sdk-orders", 0, client=client, offset=99)
out_of_range = expect(out_of_range, Problem, "fetch past the high watermark")
assert out_of_range.code == "offset_out_of_range" and out_of_range.status == 416, out_of_range

described = expect(describe_topic.sync("sdk-orders", client=client), TopicDescription, "describe")
assert [p.high_watermark for p in described.partitions] == [4, 3], described

if GROUPS:
    from tidelog_client.api.groups import commit_offsets, describe_group, fetch_group_records, join_group
    from tidelog_client.models import (
        CommitOffsetsRequest,
        CommitOffsetsResponse,
        GroupDescription,
        GroupFetchResponse,
        JoinGroupRequest,
        MemberView,
        OffsetCommit,
    )

    joined = join_group.sync("sdk-group", client=client, body=JoinGroupRequest(topics=["sdk-orders"]))
    joined = expect(joined, MemberView, "join group")
    assert sorted((a.topic, a.partition) for a in joined.assignment) == [("sdk-orders", 0), ("sdk-orders", 1)]
    got = fetch_group_records.sync("sdk-group", joined.member_id, client=client, max_records=100)
    got = expect(got, GroupFetchResponse, "group fetch")
    assert len(got.records) == 7 and {r.topic for r in got.records} == {"sdk-orders"}, got
    committed = commit_offsets.sync(
        "sdk-group",
        client=client,
        body=CommitOffsetsRequest(
            member_id=joined.member_id,
            generation=joined.generation,
            offsets=[OffsetCommit(topic="sdk-orders", partition=0, offset=2)],
        ),
    )
    expect(committed, CommitOffsetsResponse, "commit")
    group = expect(describe_group.sync("sdk-group", client=client), GroupDescription, "describe group")
    lag = {(p.topic, p.partition): p.lag for p in group.partitions}
    assert lag == {("sdk-orders", 0): 2, ("sdk-orders", 1): 3}, group
    print("sdk: groups: joined, fetched, committed, lag seen")
else:
    print("sdk: NOTE: the broker serves no /v1/groups route yet; the group step is skipped")

print("sdk: create, produce (json, binary), fetch, problems: ok")
