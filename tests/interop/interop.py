#!/usr/bin/env python3
"""A Python client of proglog, built from schema/log.capnp alone (pycapnp).

Usage: interop.py HOST:PORT [--ca CA.pem --cert CLIENT.pem --key CLIENT.key]

Produces a record and a batch, reads them back by offset, follows the log
with consumeStream into a Python RecordSink, and checks the typed
offsetOutOfRange error. Exits 0 when every check passes; otherwise prints
what failed and exits 1. Needs pycapnp >= 2 (asyncio API).
"""

import argparse
import asyncio
import os
import socket
import ssl
import sys

import capnp

SCHEMA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "schema", "log.capnp"
)
TIMEOUT = 30.0


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def load_schema(path):
    # log.capnp imports "/capnp/stream.capnp". pycapnp ships that file inside
    # its package (<site-packages>/capnp/stream.capnp), but capnp.load()
    # searches no import path by default: give it the package's parent.
    bundled = os.path.dirname(os.path.dirname(os.path.abspath(capnp.__file__)))
    return capnp.load(os.path.abspath(path), imports=[bundled])


def tls_context(ca, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def expect_ok(produced, what):
    check(
        produced.which() == "ok",
        f"{what}: expected ok, got {produced.which()}: {produced}",
    )
    return produced.ok


def make_sink_class(schema):
    class QueueSink(schema.RecordSink.Server):
        """Receives consumeStream batches into an asyncio queue."""

        def __init__(self, queue):
            self.queue = queue

        async def write(self, records, **kwargs):
            for record in records:
                self.queue.put_nowait((record.offset, bytes(record.value)))

    return QueueSink


async def next_record(queue, what):
    try:
        return await asyncio.wait_for(queue.get(), TIMEOUT)
    except asyncio.TimeoutError:
        raise CheckFailed(f"consumeStream: no record within {TIMEOUT}s ({what})")


async def session(schema, args):
    host, _, port = args.addr.rpartition(":")
    host = host.strip("[]")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.settimeout(None)
    sock.setblocking(False)
    if args.ca:
        ctx = tls_context(args.ca, args.cert, args.key)
        stream = await capnp.AsyncIoStream.create_connection(
            sock=sock, ssl=ctx, server_hostname="localhost"
        )
    else:
        stream = await capnp.AsyncIoStream.create_connection(sock=sock)
    client = capnp.TwoPartyClient(stream)
    log = client.bootstrap().cast_as(schema.Log)

    partitions = (await log.listPartitions()).partitions
    own = [p for p in partitions if p.isLeader]
    check(len(own) == 1, f"listPartitions: expected one led partition, got {partitions}")
    partition = own[0].id
    lowest, base = own[0].lowestOffset, own[0].nextOffset
    print(f"partition {partition} holds [{lowest}, {base})")

    # produce: one record.
    one = b"hello from python"
    ok = expect_ok((await log.produce(one)).result, "produce")
    check(ok.firstOffset == base, f"produce: offset {ok.firstOffset}, expected {base}")
    check(ok.count == 1, f"produce: count {ok.count}, expected 1")
    check(ok.partition == partition, f"produce: partition {ok.partition!r}")

    # produceBatch: consecutive offsets; values that are not text too.
    batch = [b"batch-0", b"\x00\xffbinary\n", b""]
    ok = expect_ok((await log.produceBatch(batch)).result, "produceBatch")
    check(
        ok.firstOffset == base + 1 and ok.count == len(batch),
        f"produceBatch: got offsets {ok.firstOffset}+{ok.count}, expected {base + 1}+{len(batch)}",
    )
    written = [one] + batch

    # consume by offset: the exact bytes.
    for i, value in enumerate(written):
        consumed = (await log.consume(partition, base + i)).result
        check(
            consumed.which() == "record",
            f"consume {base + i}: expected a record, got {consumed}",
        )
        check(
            consumed.record.offset == base + i,
            f"consume {base + i}: record says offset {consumed.record.offset}",
        )
        got = bytes(consumed.record.value)
        check(got == value, f"consume {base + i}: {got!r}, expected {value!r}")
    # The empty partition name is the node's own.
    consumed = (await log.consume("", base)).result
    check(
        consumed.which() == "record" and bytes(consumed.record.value) == one,
        f"consume '' {base}: {consumed}",
    )

    # consumeStream: what is there, then what is produced while following.
    queue = asyncio.Queue()
    sink = make_sink_class(schema)(queue)
    follow = asyncio.ensure_future(log.consumeStream(partition, base, sink, 0))
    for i, value in enumerate(written):
        got = await next_record(queue, f"existing record {base + i}")
        check(got == (base + i, value), f"consumeStream: got {got}, expected {(base + i, value)}")
    later = [f"later-{i}".encode() for i in range(50)]
    ok = expect_ok((await log.produceBatch(later)).result, "produceBatch while following")
    first_later = base + len(written)
    check(ok.firstOffset == first_later, f"produceBatch while following: offset {ok.firstOffset}")
    for i, value in enumerate(later):
        got = await next_record(queue, f"record {first_later + i} produced after the stream started")
        check(
            got == (first_later + i, value),
            f"consumeStream: got {got}, expected {(first_later + i, value)}",
        )
    check(not follow.done(), f"consumeStream returned while following: {follow}")
    follow.cancel()
    try:
        await follow
    except asyncio.CancelledError:
        pass
    print(f"followed {len(written) + len(later)} records")

    # An offset past the end: typed error, with the valid range.
    next_offset = first_later + len(later)
    wanted = next_offset + 10
    consumed = (await log.consume(partition, wanted)).result
    check(consumed.which() == "error", f"consume {wanted}: expected an error, got {consumed}")
    kind = consumed.error.kind
    check(
        kind.which() == "offsetOutOfRange",
        f"consume {wanted}: error kind {kind.which()}, expected offsetOutOfRange "
        f"({consumed.error.message})",
    )
    oor = kind.offsetOutOfRange
    check(
        (oor.offset, oor.lowest, oor.next) == (wanted, lowest, next_offset),
        f"offsetOutOfRange: got offset={oor.offset} lowest={oor.lowest} next={oor.next}, "
        f"expected offset={wanted} lowest={lowest} next={next_offset}",
    )
    print(f"offset {wanted}: offsetOutOfRange [{oor.lowest}, {oor.next})")

    # An unknown partition: typed too.
    consumed = (await log.consume("no-such-partition", 0)).result
    check(
        consumed.which() == "error" and consumed.error.kind.which() == "unknownPartition",
        f"consume no-such-partition: {consumed}",
    )


async def main(args):
    schema = load_schema(args.schema)
    await asyncio.wait_for(session(schema, args), 3 * TIMEOUT)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("addr", help="RPC address, HOST:PORT")
    p.add_argument("--schema", default=SCHEMA, help="path of log.capnp")
    p.add_argument("--ca", help="CA certificate (PEM) to verify the server; enables TLS")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="client private key (PEM)")
    args = p.parse_args(argv)
    if args.ca and not (args.cert and args.key):
        p.error("--ca needs --cert and --key (the server requires a client certificate)")
    if (args.cert or args.key) and not args.ca:
        p.error("--cert/--key need --ca")
    return args


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    print(f"pycapnp {capnp.__version__}, python {sys.version.split()[0]}")
    try:
        asyncio.run(capnp.run(main(args)))
    except CheckFailed as e:
        print(f"interop FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # transport faults, timeouts, schema load errors
        print(f"interop FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        raise
    print("interop OK")
