#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (corpus/<target>/seed-*) from the protocol documentation and
the integration tests' examples. Run from anywhere; it rewrites only the seed-* files."""
import json, os, pathlib

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, seeds):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for i, s in enumerate(seeds):
        (d / f"seed-{i:02}").write_bytes(s if isinstance(s, bytes) else s.encode())


def chunked(body, cuts=(), flags=0):
    """The `Chunked` input format: a head byte (flags, number of cuts), the cut places, the body."""
    body = body if isinstance(body, bytes) else body.encode()
    return bytes([(flags << 3) | len(cuts)] + list(cuts)) + body


# ws_session: one frame per line (docs/protocol.md, tests/api/realtime.rs, ws_floods.rs, limits.rs).
j = lambda v: json.dumps(v, separators=(",", ":"))
hello = j({"type": "hello"})
send = lambda r, c, t, **kw: j({"type": "send", "req_id": r, "channel_id": c, "text": t, **kw})
ws = [
    [hello, send("r1", "fz", "hello"), j({"type": "ping", "req_id": "p"})],
    [j({"type": "hello", "resume": {"fz": 0, "nowhere": 3}}), j({"type": "typing", "channel_id": "fz", "active": True})],
    [hello, send("r1", "fz", "m0", client_msg_id="k0"), send("again", "fz", "m0", client_msg_id="k0"),
     send("x", "other", "hi")],
    [hello, j({"type": "read", "channel_id": "fz", "seq": 1}), j({"type": "read", "channel_id": "fz", "seq": 4}),
     j({"type": "read", "channel_id": "fz", "seq": 2}), j({"type": "ping", "req_id": "p"})],
    [hello, j({"type": "stop", "req_id": "s", "message_id": 1}), j({"type": "ping"})],
    [hello, j({"type": "send", "channel_id": "a b", "text": "x"}), j({"type": "ping", "req_id": "p"})],
    [hello, send("c", "fz", "", message_type="custom", custom_type="card", payload={"a": [1, 2]},
                 data={"k": "v"}, mentions=["bob"])],
    [hello, send("f", "fz", "file", message_type="file", file_id="0" * 32, parent_id=1)],
    [hello, "{not json", j({"type": "nope"}), hello, j({"type": "send"})],
    [hello, j({"type": "ping", "req_id": "p"}), "\x01binary"],
    [hello, "\x03ping-payload", "\x04pong", j({"type": "ping", "req_id": "q"}), "\x02"],
    [hello, send("big", "fz", "x" * 2000), "\x05"],
    [j({"type": "ping"})],
    ["\x01bin-first"],
    [j({"type": "hello", "resume": {"dm.alice.bob": 0}}), send("d", "dm.alice.bob", "hey")],
]
write("ws_session", ["\n".join(frames) for frames in ws])

# nim_params: form bodies of tests/api/nim.rs and params.rs.
nim = [
    'from=zhangsan&ope=0&to=list&type=0&body={"msg":"hello"}&robotAccount=robot&pushContent=',
    "from=zhangsan&to=list&begintime=0&endtime=1700000000000&limit=100&reverse=1",
    "from=list&ope=0&to=zhangsan&type=0&body={'msg': 'plain'}",
    "accid=Wang.Wu&name=Wang&icon=http%3A%2F%2Fx%2Fa.png&gender=1&ex=%7B%7D&token=chosen-token-1",
    "accids=%5B%22wang.wu%22%2C%22ghost%22%5D",
    "accids=notjson&bad=x&many=%5B1%2C2%2C3%5D",
    "tname=Team&owner=owner1&members=%5B%22member1%22%5D&msg=join&magree=0&joinmode=0",
    "from=member1&ope=1&to=1&type=100&body=%7B%27msg%27%3A+%27it%5C%27s+%22q%22%27%2C+%27ok%27%3A+True%2C+%27n%27%3A+None%7D",
    "accid=wang.wu&needkick=TRUE&reverse=3&limit=+12+",
    "{'msg': 'it\\'s \"quoted\"', 'ok': True, 'n': None, \"k\": 'v'}",
    "deleteMsgid=7&timetag=1700000000000&type=8&from=member2&to=1",
]
write("nim_params", nim)

# sendbird_send_stream: bodies of tests/api/sendbird_bots.rs, whole and cut.
first = '{"message": "Once ", "channel_url": "streamy", "target_message_id": "42"}'
body = first + '{"message_delta": "upon "}{"message_delta": "a time."}'
sb = [
    chunked(body),
    chunked(body, (10, 90, 160, 200)),
    chunked('{"message": "Half", "channel_url": "streamy"}{"message_delta": " a sen', (100,)),
    chunked(' \n{"message":"x","channel_url":"c","target_message_id":7}\r\n{"message_delta":"\\u00e9"}  ', (3, 250)),
    chunked('{"message": "a"} [1, 2] "s" true null 12 ', (128, 129)),
    chunked('{"message": "a"}}', (1,)),
]
write("sendbird_send_stream", sb)

# provider_sse: the fake provider's and the real APIs' stream shapes (crates/llm/src/fake.rs).
openai = "".join(f"data: {j(v)}\n\n" for v in [
    {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " wörld"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
]) + "data: [DONE]\n\n"
anthropic = "".join(f"event: {v['type']}\ndata: {j(v)}\n\n" for v in [
    {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "c", "usage": {"input_tokens": 10, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
])
sse = [
    chunked(openai), chunked(openai, (17, 18, 100, 200, 201)),
    chunked(openai.replace("\n", "\r\n"), (64,)),
    chunked(": keep-alive\nretry: 100\nid: 1\n" + openai[:120]),
    chunked('data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'),
    chunked("data: {not json}\n\n"),
    chunked(anthropic, flags=1), chunked(anthropic, (1, 40, 41, 200), flags=1),
    chunked('event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n', flags=1),
    chunked(anthropic[:300], (150,), flags=1),
    chunked(b"data: \xff\xfe\n\n", flags=1),
]
write("provider_sse", sse)

# multipart_upload: forms as reqwest and browsers send them to /api/v1/files (tests/api/files.rs).
def form(parts, boundary="XyZ"):
    out = b""
    for headers, data in parts:
        out += f"--{boundary}\r\n".encode() + "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + data + b"\r\n"
    return boundary.encode() + b"\n" + out + f"--{boundary}--\r\n".encode()

cid = ['Content-Disposition: form-data; name="channel_id"']
fil = lambda name="a.txt", ct="text/plain": [f'Content-Disposition: form-data; name="file"; filename="{name}"', f"Content-Type: {ct}"]
png = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
mp = [
    form([(cid, b"fz"), (fil(), b"hello world")]),
    form([(cid, b" fz "), (fil("p.png", "image/png"), png)]),
    form([(fil(), b"no channel first"), (cid, b"fz")]),
    form([(cid, b"fz"), (['Content-Disposition: form-data; name="file"'], b"")]),
    form([(cid, b"nowhere"), (fil(), b"x")]),
    form([(cid, b"fz"), (['Content-Disposition: form-data; name="other"'], b"ignored"), (fil("r\u00e9sum\u00e9.html", "text/html"), b"<html><script>x</script>")]),
    b"XyZ\n--XyZ\r\nContent-Disposition: form-data; name=\"channel_id\"\r\n\r\nfz\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\n\r\nno end",
    b"a-long-boundary-------------------------------1234\n" + form([(cid, b"fz"), (fil(), b"y" * 300)], "a-long-boundary-------------------------------1234").split(b"\n", 1)[1],
]
write("multipart_upload", mp)

# moderation_rules: rules of crates/moderation's tests and the README; then texts.
mod = [
    "brude\tdarn\tgood grief\n---\nWell, DARN it\ngood   grief!\ndarnation is a word",
    "mcards\t~\\b\\d{4}(?:[ -]?\\d{4}){3}\\b\nmswear\theck\tça\nfrefund\trefund\n---\nHeck, refund 4111 1111 1111 1111 ça",
    "mm\tbuy\nbspam\tbuy now\n#1\n---\nbuy now!\nsee https://a.example and www.b.example",
    "blate\tzebra\nbearly\tapple\n==\nfapp\t~(?i)secret\n==\nmchan\tc++\t~\\d+\n---\nan apple and a zebra\nmy secret c++ 123",
    "fpii\t~\\d{3}-\\d{2}-\\d{4}\nbbroken\t~(unclosed\n---\nssn 123-45-6789",
    "mempty\t~x*\nbw\t~\\w{10}\n---\nxxxx yyyyyyyyyy\n\u00e9\u00e9x\u00e9",
]
write("moderation_rules", mod)

# reply_guard: the guard's unit tests (crates/service/src/moderation/reply.rs); pieces cut at \x01.
rg = [
    "brude\tdarn\tgood grief\nmheck\theck\tça\nfrefund\trefund\n---\nSure, the da\x01rn\x01 answer is 4.",
    "brude\tdarn\n---\nthe darn\x01ation of it",
    "brude\tdarn\n---\nwell \x01darn",
    "mheck\theck\tça\nfrefund\trefund\n---\noh he\x01ck, ç\x01a refund",
    "bphrase\tgood grief\n---\noh good \x01grief\x01!",
    "mx\tsecret\n---\n" + "x" * 100 + "\x01 secret" + "\x01 tail " * 60,
    "bw\tçà\n---\n\u00e7\x01\u00e0 and \u00e7\u00e0\x01\u00e7",
]
write("reply_guard", rg)

# sendbird_file_upload: the multipart sends of the official SDKs and tests/api/sendbird_files.rs.
field = lambda name: [f'Content-Disposition: form-data; name="{name}"']
sbf = [
    form([(field("message_type"), b"FILE"), (field("user_id"), b"alice"), (fil(), b"hello world")]),
    form([(field("message_type"), b"FILE"), (field("user_id"), b"alice"), (field("custom_type"), b"doc"),
          (field("mentioned_user_ids"), b"bob,alice"), (fil("p.png", "image/png"), png)]),
    form([(field("message_type"), b"FILE"), (field("user_id"), b"alice"), (field("url"), b"https://x.example/a.pdf"),
          (field("file_size"), b"12")]),
    form([(field("message_type"), b"MESG"), (field("user_id"), b"bob"), (field("message"), b"hi"),
          (field("dedup_id"), b"d-1"), (field("is_silent"), b"true")]),
    form([(field("message_type"), b"FILE"), (field("user_id"), b"alice"), (fil(), b"a"), (fil(), b"b")]),
    form([(field("message_type"), b"FILE"), (field("user_id"), b"alice"), (field("parent_message_id"), b"x1")]),
]
write("sendbird_file_upload", sbf)
