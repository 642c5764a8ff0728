//! The `Log` interface's methods: produce (single, batch, stream opening),
//! consume, consumeStream, getServers, listPartitions.

use super::*;

/// The outcome of an append as `Produced` carries it: (partition, first offset, count) or the error.
pub(super) type AppendOutcome = Result<(String, u64, u32), (WireError, String)>;

/// The [`StreamRequest`] of a consumeStream or replicate call (their
/// parameters are alike but of two generated types).
macro_rules! stream_request {
    ($params:expr) => {{
        let p = $params.get()?;
        StreamRequest {
            id: text(p.get_partition())?,
            from: p.get_offset(),
            sink: p.get_sink()?,
            max_batch_bytes: p.get_max_batch_bytes(),
        }
    }};
}

pub(super) fn log_error(e: &LogError) -> (WireError, String) {
    (crate::rpc::errors::classify(e), e.to_string())
}

/// An `acks=all` refusal or timeout as a wire error.
pub(super) fn ack_error(e: crate::replication::AckError) -> (WireError, String) {
    use crate::replication::AckError;
    match e {
        AckError::NotEnoughReplicas { live, required } => (
            WireError::NotEnoughReplicas { live, required },
            format!(
                "not appended: {live} live holders of the partition, min-insync-replicas is {required}"
            ),
        ),
        AckError::Timeout { after, confirmed } => (
            WireError::ReplicationTimeout,
            format!(
                "only {confirmed} holders confirmed within {after:?}; it may still be replicated"
            ),
        ),
    }
}

/// A read's byte budget: what the caller asked (0: no preference), at most `limit`.
pub(super) fn batch_bytes(asked: u32, limit: u32) -> usize {
    let bytes = match asked {
        0 => limit,
        n => n.min(limit),
    };
    bytes as usize
}

impl LogService {
    /// Sends `msg` to partition `id` for the caller, authorized as
    /// `consume` (the call's span notes the partition, `offset` and `count`).
    async fn read<M, T>(
        &self,
        id: &str,
        offset: u64,
        count: u64,
        msg: M,
    ) -> Result<T, (WireError, String)>
    where
        M: actix::Message<Result = Result<T, LogError>> + Send + 'static,
        T: Send + 'static,
        LogActor: actix::Handler<M>,
    {
        let (id, log) = self.partition(id, ACTION_CONSUME)?;
        note(&id, offset, count);
        match log.send(msg).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(log_error(&e)),
            Err(e) => Err((WireError::Unavailable, e.to_string())),
        }
    }
}

/// Copies a call's values out of its message into one buffer, sized once:
/// each value is looked up in the message once (a second pass would cost
/// as much as the copy), through a list of slices that lives only here
/// (16 bytes a value, at most twice the 8 bytes of pointer each value
/// took in the message).
pub(super) fn copy_values(list: capnp::data_list::Reader<'_>) -> capnp::Result<Values> {
    let slices = list.iter().collect::<capnp::Result<Vec<&[u8]>>>()?;
    let bytes = slices.iter().map(|v| v.len()).sum();
    let mut values = Values::with_capacity(slices.len(), bytes);
    for v in slices {
        values.push(v);
    }
    Ok(values)
}

pub(super) fn write_produced(
    out: produced::Builder<'_>,
    outcome: Result<(String, u64, u32), (WireError, String)>,
) {
    match outcome {
        Ok((partition, first, count)) => {
            let mut ok = out.init_ok();
            ok.set_partition(&partition);
            ok.set_first_offset(first);
            ok.set_count(count);
        }
        Err((kind, message)) => write_error(out.init_error(), &kind, &message),
    }
}

impl LogService {
    /// Appends to the own partition; counts what was appended. Batches of
    /// one produce stream share a `session`, so none lands behind a failed one.
    pub(super) async fn append_values(
        &self,
        values: Values,
        session: Option<u64>,
        acks: Acks,
    ) -> AppendOutcome {
        self.check_sizes(values.iter())?;
        let (id, log) = self.partition("", ACTION_PRODUCE)?;
        if acks == Acks::All {
            self.ctx.in_sync.check_live().map_err(ack_error)?;
        }
        let count = values.len() as u32;
        let bytes = match &self.metrics {
            Some(_) => values.bytes() as u64,
            None => 0,
        };
        let append = Append {
            session,
            ..Append::values(values)
        };
        // In order, whatever the mailbox's fill: batches of one stream (and
        // calls of one connection) land in the order they arrived.
        match crate::log::append_in_order(&log, append).await {
            Ok(range) => {
                note(&id, range.start, count.into());
                self.ctx.in_sync.leader_committed(range.end);
                if let Some(m) = &self.metrics {
                    m.appended(count.into(), bytes);
                }
                if acks == Acks::All {
                    self.ctx.in_sync.wait(range.end).await.map_err(|e| {
                        let (kind, why) = ack_error(e);
                        let offsets = format!("offsets {}..{} of {id}", range.start, range.end);
                        (kind, format!("{offsets} appended on the leader: {why}"))
                    })?;
                }
                Ok((id, range.start, count))
            }
            Err(e) => Err(log_error(&e)),
        }
    }

    /// Appends to the own partition; fills a `Produced`.
    pub(super) async fn append(
        &self,
        values: Values,
        acks: Acks,
        out: produced::Builder<'_>,
    ) -> Outcome {
        let outcome = self.append_values(values, None, acks).await;
        let label = match &outcome {
            Ok(_) => Ok(()),
            Err((kind, _)) => Err(kind.kind()),
        };
        write_produced(out, outcome);
        label
    }
}

impl log::Server for LogService {
    async fn produce(
        self: CapRc<Self>,
        params: log::ProduceParams,
        mut results: log::ProduceResults,
    ) -> Result<(), Error> {
        self.call(PRODUCE, async {
            let p = params.get()?;
            let values = Values::one(p.get_value()?);
            let _charge = self.charge(&values);
            Ok(self
                .append(values, p.get_acks()?, results.get().init_result())
                .await)
        })
        .await
    }

    async fn produce_batch(
        self: CapRc<Self>,
        params: log::ProduceBatchParams,
        mut results: log::ProduceBatchResults,
    ) -> Result<(), Error> {
        self.call(PRODUCE_BATCH, async {
            let p = params.get()?;
            let values = copy_values(p.get_values()?)?;
            let _charge = self.charge(&values);
            Ok(self
                .append(values, p.get_acks()?, results.get().init_result())
                .await)
        })
        .await
    }

    async fn produce_stream(
        self: CapRc<Self>,
        params: log::ProduceStreamParams,
        mut results: log::ProduceStreamResults,
    ) -> Result<(), Error> {
        self.call(PRODUCE_STREAM, async {
            let Some(stream) = self.connection.open_stream(MAX_STREAMS_PER_CONNECTION) else {
                return Err(Error::overloaded(format!(
                    "{MAX_STREAMS_PER_CONNECTION} streams are open on this connection: \
                     at most {MAX_STREAMS_PER_CONNECTION}"
                )));
            };
            let sink = ProduceSink {
                service: self.clone(),
                session: crate::log::new_session(),
                acks: params.get()?.get_acks()?,
                results: RefCell::new(Vec::new()),
                _stream: stream,
                _open: self
                    .metrics
                    .as_ref()
                    .map(|m| m.stream_opened(StreamKind::Produce)),
            };
            results.get().set_sink(capnp_rpc::new_client(sink));
            Ok(Ok(()))
        })
        .await
    }

    async fn consume(
        self: CapRc<Self>,
        params: log::ConsumeParams,
        mut results: log::ConsumeResults,
    ) -> Result<(), Error> {
        self.call(CONSUME, async {
            let p = params.get()?;
            let (id, offset) = (text(p.get_partition())?, p.get_offset());
            let reserved = self
                .reserve_answer(self.ctx.max_record_bytes as usize)
                .await;
            let outcome = self.read(&id, offset, 1, Read { offset }).await;
            let out = results.get().init_result();
            match outcome {
                Ok(value) => {
                    if let Some(m) = &self.metrics {
                        m.read(1, value.len() as u64);
                    }
                    if let Some(r) = reserved {
                        r.keep(value.len());
                    }
                    let mut r = out.init_record();
                    r.set_offset(offset);
                    r.set_value(&value);
                    Ok(Ok(()))
                }
                Err((kind, message)) => {
                    write_error(out.init_error(), &kind, &message);
                    Ok(Err(kind.kind()))
                }
            }
        })
        .await
    }

    async fn consume_batch(
        self: CapRc<Self>,
        params: log::ConsumeBatchParams,
        mut results: log::ConsumeBatchResults,
    ) -> Result<(), Error> {
        self.call(CONSUME_BATCH, async {
            let p = params.get()?;
            let (id, offset) = (text(p.get_partition())?, p.get_offset());
            let max_records = match p.get_max_records() {
                0 => u64::MAX,
                n => n.into(),
            };
            let max_bytes = batch_bytes(p.get_max_bytes(), self.ctx.max_stream_batch_bytes);
            // The read stops at `max_records`: what is answered is all that
            // is read and checked.
            let read = ReadBatch {
                from: offset,
                max_bytes,
                max_records,
            };
            let reserved = self.reserve_answer(max_bytes).await;
            let outcome = self.read(&id, offset, 0, read).await;
            let out = results.get().init_result();
            match outcome {
                Ok(batch) => {
                    let n = batch.len();
                    let mut list = out.init_records(n as u32);
                    let mut bytes = 0;
                    for (i, (offset, value)) in batch.iter().enumerate() {
                        let mut r = list.reborrow().get(i as u32);
                        r.set_offset(offset);
                        r.set_value(value);
                        bytes += value.len();
                    }
                    if let Some(m) = &self.metrics {
                        m.read(n as u64, bytes as u64);
                    }
                    if let Some(r) = reserved {
                        r.keep(bytes);
                    }
                    Ok(Ok(()))
                }
                Err((kind, message)) => {
                    write_error(out.init_error(), &kind, &message);
                    Ok(Err(kind.kind()))
                }
            }
        })
        .await
    }

    async fn consume_stream(
        self: CapRc<Self>,
        params: log::ConsumeStreamParams,
        mut results: log::ConsumeStreamResults,
    ) -> Result<(), Error> {
        self.call(CONSUME_STREAM, async {
            let end = self.serve_stream(stream_request!(params)).await;
            Ok(write_stream_end(results.get().init_end(), end))
        })
        .await
    }

    async fn replicate(
        self: CapRc<Self>,
        params: log::ReplicateParams,
        mut results: log::ReplicateResults,
    ) -> Result<(), Error> {
        self.call(REPLICATE, async {
            let end = self.serve_stream(stream_request!(params)).await;
            Ok(write_stream_end(results.get().init_end(), end))
        })
        .await
    }

    async fn replicated(
        self: CapRc<Self>,
        params: log::ReplicatedParams,
        _: log::ReplicatedResults,
    ) -> Result<(), Error> {
        self.call(REPLICATED, async {
            let p = params.get()?;
            let (id, node) = (text(p.get_partition())?, text(p.get_node())?);
            let id = self.ctx.partitions.resolve(&id).to_string();
            // No result to carry a typed error: a denial fails the call.
            if let Err((_, message)) = self.authorize(ACTION_REPLICATE, &id) {
                return Err(Error::failed(message));
            }
            if self.ctx.partitions.is_own(&id)
                && let Some(lag) = self.ctx.in_sync.report(&node, p.get_committed())
                && let Some(m) = &self.metrics
            {
                m.replication_lag(lag);
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn get_servers(
        self: CapRc<Self>,
        _: log::GetServersParams,
        mut results: log::GetServersResults,
    ) -> Result<(), Error> {
        self.call(GET_SERVERS, async {
            if let Err((kind, message)) = self.authorize(ACTION_DESCRIBE, OBJECT_CLUSTER) {
                write_error(results.get().init_error(), &kind, &message);
                return Ok(Err(kind.kind()));
            }
            let cluster = self.ctx.cluster.borrow();
            let all: Vec<(&ServerInfo, bool)> = cluster
                .local
                .iter()
                .map(|s| (s, true))
                .chain(cluster.peers.iter().map(|s| (s, false)))
                .collect();
            let mut list = results.get().init_servers(all.len() as u32);
            for (i, (s, local)) in all.into_iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_id(&s.name);
                b.set_rpc_addr(&s.rpc_addr);
                b.set_alive(s.alive);
                b.set_partition(&s.partition);
                b.set_is_local(local);
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn list_partitions(
        self: CapRc<Self>,
        _: log::ListPartitionsParams,
        mut results: log::ListPartitionsResults,
    ) -> Result<(), Error> {
        self.call(LIST_PARTITIONS, async {
            if let Err((kind, message)) = self.authorize(ACTION_DESCRIBE, OBJECT_CLUSTER) {
                write_error(results.get().init_error(), &kind, &message);
                return Ok(Err(kind.kind()));
            }
            let own = self.ctx.partitions.own_id().to_string();
            let mut infos = Vec::new();
            for id in self.ctx.partitions.ids() {
                let Ok(log) = self.ctx.partitions.get(&id) else {
                    continue;
                };
                let Ok(stats) = log.send(Stats).await else {
                    continue;
                };
                let cluster = self.ctx.cluster.borrow();
                let owner = owner_of(&id, &cluster);
                let following = cluster.following.contains(&id);
                let lag = match cluster.leader_ends.get(&id) {
                    Some(end) if id != own => end.saturating_sub(stats.next_offset),
                    _ => 0,
                };
                infos.push((id.clone(), owner, stats, id == own, following, lag));
            }
            let mut list = results.get().init_partitions(infos.len() as u32);
            for (i, (id, owner, stats, leader, following, lag)) in infos.into_iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_id(&id);
                b.set_owner(&owner);
                b.set_lowest_offset(stats.lowest_offset);
                b.set_next_offset(stats.next_offset);
                b.set_is_leader(leader);
                b.set_following(following);
                b.set_lag(lag);
            }
            Ok(Ok(()))
        })
        .await
    }
}

/// The node leading partition `id`, from the cluster view (or the id's name part).
pub(super) fn owner_of(id: &str, cluster: &ClusterView) -> String {
    cluster
        .local
        .iter()
        .chain(cluster.peers.iter())
        .find(|s| s.partition == id)
        .map(|s| s.name.clone())
        .unwrap_or_else(|| id.rsplit_once('-').map_or(id, |(name, _)| name).to_string())
}
