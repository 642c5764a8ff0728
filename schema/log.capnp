# proglog's wire contract. Any Cap'n Proto implementation can use the service
# from this file alone (it imports only the standard /capnp/stream.capnp).
#
# Conventions:
# - Domain errors (bad offset, unknown partition, too large, denied, corrupt,
#   unavailable) come back as data in a result union, typed, so a client in
#   any language can tell them apart without parsing strings. Transport faults
#   (connection lost, malformed message) stay RPC exceptions.
# - A partition id is text; the empty text means the serving node's own
#   partition.

@0xa42fdd441c49a2cb;

using Stream = import "/capnp/stream.capnp";

# The service a node exposes on its RPC port.
interface Log {
  # Appends one record to the node's own partition, answered per `acks`.
  produce @0 (value :Data, acks :Acks) -> (result :Produced);

  # Appends records in order; they get consecutive offsets.
  produceBatch @1 (values :List(Data), acks :Acks) -> (result :Produced);

  # Opens a flow-controlled produce stream: call `sink.write` repeatedly
  # (each write is one batch with consecutive offsets), then `sink.finish`
  # for the outcome of every write. A stream carries at most 4096 writes
  # (the server keeps each one's outcome for `finish`): write 4097 fails the
  # stream with an `overloaded` exception and is not appended; finish and
  # open another. A connection holds at most 64 streams open at once
  # (produce, consume and replication streams); one more fails the call
  # (`overloaded`).
  produceStream @2 (acks :Acks) -> (sink :ProduceSink);

  # Reads the record at `offset` of `partition`.
  consume @3 (partition :Text, offset :UInt64) -> (result :Consumed);

  # Pushes records from `offset` on into `sink`, in order, in batches of at
  # most about `maxBatchBytes` (0 = server default), with `-> stream` flow
  # control. At the end of the log the server waits for new records; the
  # call returns only on an error, or when the client cancels it or drops
  # the sink.
  consumeStream @4 (partition :Text, offset :UInt64, sink :RecordSink, maxBatchBytes :UInt32) -> (end :StreamEnd);

  # The nodes of the cluster as this node sees them. Authorized with the
  # action `describe` on the object `cluster`; a caller without it gets an
  # empty list and `error` (permissionDenied). `error` is unset otherwise.
  getServers @5 () -> (servers :List(Server), error :Error);

  # The partitions held by this node. Authorized as getServers.
  listPartitions @6 () -> (partitions :List(PartitionInfo), error :Error);

  # Replication: as consumeStream, for a peer that keeps a replica of this
  # node's own partition (the only partition a node lets others replicate,
  # so copies never cycle). Authorized with the action `replicate`. Records
  # travel as the leader stores them (see FrameSink): the leader checked
  # each frame's CRC-32C when it read it, the replica checks it again
  # before writing the same bytes. Batches are up to `maxBatchBytes`
  # (0 = the server's default for replication, 1 MiB: larger than
  # consumeStream's, as a replica far behind copies whole segments).
  replicate @7 (partition :Text, offset :UInt64, sink :FrameSink, maxBatchBytes :UInt32) -> (end :StreamEnd);

  # Replication: the replica of `partition` held by node `node` has
  # committed every record below `committed` (under that node's sync
  # policy). Sent by the replicator after each batch it appends; the leader
  # answers `acks=all` produces from these positions. Authorized with the
  # action `replicate`.
  replicated @8 (partition :Text, node :Text, committed :UInt64) -> ();

  # Reads consecutive records of `partition` from `offset` in one reply:
  # at most `maxRecords` (0: no count limit) and about `maxBytes` of frames
  # (0 or more than the server's stream batch size: that size), at least one
  # record when `offset` holds one, never past the end of its segment. An
  # empty list at the end of the log; `offsetOutOfRange` outside it.
  consumeBatch @9 (partition :Text, offset :UInt64, maxRecords :UInt32, maxBytes :UInt32) -> (result :ConsumedBatch);
}

# When a produce is answered.
enum Acks {
  leader @0;   # once the leader has committed it (its sync policy), as before
  all @1;      # once min-insync-replicas holders, the leader included, have
               # committed it; fewer live holders: notEnoughReplicas at once
}

interface ProduceSink {
  write @0 (values :List(Data)) -> stream;
  # One result per write, in the order written.
  finish @1 () -> (results :List(Produced));
}

interface RecordSink {
  write @0 (records :List(Record)) -> stream;
}

struct Record {
  offset @0 :UInt64;
  value @1 :Data;
}

# Where a leader pushes its partition's records for a replica.
interface FrameSink {
  # `frames`: the records at offsets `first`, `first + 1`, ... as the
  # leader stores them, one frame each, back to back. A frame is
  #   length u32 | crc32c u32 | offset u64 | `length` record bytes
  # (integers little-endian; the CRC-32C (Castagnoli) covers the length,
  # the offset and the record bytes, in that order). `committedEnd`: the
  # leader's committed end when it read them (the replica's lag is
  # committedEnd minus its own end).
  write @0 (first :UInt64, frames :Data, committedEnd :UInt64) -> stream;
}

struct Produced {
  union {
    ok :group {
      partition @0 :Text;
      firstOffset @1 :UInt64;
      count @2 :UInt32;
    }
    error @3 :Error;
  }
}

struct Consumed {
  union {
    record @0 :Record;
    error @1 :Error;
  }
}

struct ConsumedBatch {
  union {
    records @0 :List(Record);
    error @1 :Error;
  }
}

struct StreamEnd {
  union {
    # The stream stopped because the sink went away.
    sinkClosed @0 :Void;
    error @1 :Error;
  }
}

struct Server {
  id @0 :Text;             # node name
  rpcAddr @1 :Text;
  alive @2 :Bool;
  partition @3 :Text;      # the partition this node leads
  isLocal @4 :Bool;        # the node that answered
}

struct PartitionInfo {
  id @0 :Text;
  owner @1 :Text;          # name of the node that leads it
  lowestOffset @2 :UInt64;
  nextOffset @3 :UInt64;
  isLeader @4 :Bool;       # this node leads it (else it holds a replica)
  following @5 :Bool;      # a replica this node keeps in step now (false for a
                           # copy it no longer pulls: kept until retention)
  lag @6 :UInt64;          # a replica's records behind its leader's committed
                           # end as this node last saw it (0 for the leader,
                           # and for a replica that has not heard from it)
}

# A domain error. For a failed produce, each kind says whether the records
# were NOT appended (sending them again is safe) or MAYBE appended (sending
# them again may duplicate them): only `indeterminate` is "maybe"; every
# other kind means "not appended".
struct Error {
  message @0 :Text;        # human-readable, for logs
  kind :union {
    offsetOutOfRange @1 :OffsetOutOfRange;
    unknownPartition @2 :Text;
    recordTooLarge @3 :RecordTooLarge;
    permissionDenied @4 :PermissionDenied;
    corruption @5 :Void;   # damaged data on disk; never served
    unavailable @6 :Void;  # not appended: restarting, failed, closed, or an
                           # earlier batch of the same produce stream failed
    invalidArgument @7 :Void;
    diskFull @8 :Void;     # not appended: the node's disk is full (or below
                           # its free-space floor); retry after a while
    readOnly @9 :Void;     # not appended: the partition's durable data is
                           # damaged; it serves reads until an operator repairs it
    indeterminate @10 :Void; # MAYBE appended: a write or fsync failed after
                           # the records reached the file
    recordsLost @11 :RecordsLost; # these offsets will never be served
    notEnoughReplicas @12 :NotEnoughReplicas; # not appended (acks=all): too
                           # few live holders of the partition
    replicationTimeout @13 :Void; # APPENDED on the leader (acks=all), but
                           # fewer than min-insync-replicas holders confirmed it
                           # in time; it may still be replicated: resending may
                           # duplicate it
    overloaded @14 :Void;  # not done: a per-client limit was reached (streams
                           # open on one connection); retry once some end
  }
}

struct NotEnoughReplicas {
  live @0 :UInt32;         # live holders, the leader included
  required @1 :UInt32;     # min-insync-replicas
}

struct RecordsLost {
  from @0 :UInt64;         # lost offsets are [from, to): read on from `to`
  to @1 :UInt64;
}

struct OffsetOutOfRange {
  offset @0 :UInt64;
  lowest @1 :UInt64;       # valid range is [lowest, next)
  next @2 :UInt64;
}

struct RecordTooLarge {
  size @0 :UInt64;
  max @1 :UInt64;
}

struct PermissionDenied {
  subject @0 :Text;
  action @1 :Text;
  object @2 :Text;
}
