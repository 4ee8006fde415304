//! Steps 2 and 3, streamed: one list from its owner's local step through
//! every hop of its route, chunk by chunk. Chunk `k` of a list can be at hop
//! 2 while chunk `k+1` is at hop 1; the coordinator keeps a list's masked
//! values and its final 16-byte elements (split into the matching's
//! partitions as they arrive), and holds 32-byte points only while
//! forwarding them from one hop to the next. Under keyed-prf the route is
//! empty: the owner's 16-byte tags are the final list.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cleanroom::Psi;
use cleanroom::protocol::{FinalList, MAX_LIST_ROWS, MaskedList, ProtocolError, Split, encode};
use cleanroom::psi::{POINT_LEN, TRUNCATED_LEN};
use cleanroom_proto::CHUNK_POINTS;
use cleanroom_proto::v1::{ListChunk, LocalStepRequest, PointChunk, ReblindChunk, SessionRef};
use futures::future::{BoxFuture, try_join_all};
use indicatif::ProgressBar;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::deadline::{Deadlines, next_message, unary};
use crate::run::{CoordinatorError, Peer};

/// Chunks buffered between two hops.
const IN_FLIGHT: usize = 4;

/// A list's length as announced by its owner (`u64::MAX` until known).
struct Announced(AtomicU64);

impl Announced {
    fn get(&self) -> Option<u64> {
        let v = self.0.load(Ordering::SeqCst);
        (v != u64::MAX).then_some(v)
    }
}

/// Appends `more` to `v`, growing it (by doubling) only as data arrives and
/// never beyond `limit` elements: a peer's announced length bounds the
/// buffer but never allocates it up front.
fn append_bounded<T: Copy>(v: &mut Vec<T>, more: &[T], limit: usize) {
    if v.len() + more.len() > v.capacity() {
        let want = (v.len() * 2).max(v.len() + more.len()).min(limit);
        v.reserve_exact(want.saturating_sub(v.len()));
    }
    v.extend_from_slice(more);
}

/// How long a stage whose next hop stopped reading waits for that hop's
/// own error (which names the real cause) to end the run first.
const CLOSED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The error for a hop that stopped reading its re-blind stream. The hop's
/// own stage normally fails first with the cause (all stages run under one
/// `try_join_all`, which ends at the first error); this one, naming the
/// hop, stands only if that does not happen within [`CLOSED_GRACE`].
async fn closed_early(hop: &Peer) -> CoordinatorError {
    tokio::time::sleep(CLOSED_GRACE).await;
    hop.bad("stopped reading its re-blind stream early")
}

/// The next hop of a list: where its points go, and how many it owes back.
struct Hop<'a> {
    peer: &'a Peer,
    tx: mpsc::Sender<ReblindChunk>,
    owed: Arc<AtomicU64>,
    /// The list's length and its owner's tag for this hop, relayed with
    /// the first chunk.
    header: Option<(u64, Vec<u8>)>,
}

impl Hop<'_> {
    /// Queues `points` (whole 32-byte points), with their sender's tag for
    /// this hop, for the hop: one chunk as its sender cut it.
    async fn send(
        &mut self,
        session: &SessionRef,
        owner: usize,
        points: Vec<u8>,
        chunk_tag: Vec<u8>,
    ) -> Result<(), CoordinatorError> {
        let k = (points.len() / POINT_LEN) as u64;
        let (list_rows, length_tag) = self.header.take().unwrap_or_default();
        let msg = ReblindChunk {
            session: Some(session.clone()),
            owner: owner as u32,
            points,
            list_rows,
            length_tag,
            chunk_tag,
        };
        self.peer.traffic.sent(msg.encoded_len());
        self.owed.fetch_add(k, Ordering::SeqCst);
        if self.tx.send(msg).await.is_err() {
            return Err(closed_early(self.peer).await);
        }
        Ok(())
    }
}

/// What the coordinator keeps of one list after the ring.
pub(crate) struct RingOutput {
    /// Masked values, width, length, dummies.
    pub masked: MaskedList,
    /// The final elements (truncated points, or tags), split into
    /// partitions as they arrived (`None` only inside the ring's stages).
    pub finals: Option<FinalList>,
    /// The owner's length tags, one per party in ring order (under
    /// keyed-prf the unmasker's goes with the mask-sum request; under
    /// ecdh-ring they were relayed to the hops and these are empty).
    pub length_tags: Vec<Vec<u8>>,
}

/// One list's run through [`through_ring`]: whose, under which protocol.
pub(crate) struct ListJob {
    /// The matching protocol of the analysis.
    pub psi: Psi,
    /// Ring index of the list's owner.
    pub owner: usize,
    /// Masked values per row.
    pub width: usize,
    /// keyed-prf: the group key the first party sealed for the owner
    /// (empty for the first party itself, and under ecdh-ring).
    pub sealed_group_key: Vec<u8>,
    /// The run's split of final lists into partitions (one for all lists).
    pub split: Split,
}

/// Streams list `owner` from its local step through its route. The
/// `stall` deadline bounds every silence during which a node owes a
/// message, `local` the owner's local step.
pub(crate) async fn through_ring(
    peers: &[Peer],
    session: &SessionRef,
    job: ListJob,
    deadlines: &Deadlines,
    received: &ProgressBar,
    finished: &ProgressBar,
) -> Result<RingOutput, CoordinatorError> {
    let ListJob {
        psi,
        owner,
        width,
        sealed_group_key,
        split,
    } = job;
    let split = &split;
    let (stall, local_limit) = (deadlines.stall, deadlines.local);
    let n = peers.len();
    let route = encode::route(psi, owner, n);
    let source = &peers[owner];
    let mut local = unary(
        source,
        "local step",
        stall,
        source.client.clone().local_step(LocalStepRequest {
            session: Some(session.clone()),
            sealed_group_key,
        }),
    )
    .await?;
    // Until its list is ready the owner sends heartbeats; the re-blind
    // streams open with the first data chunk, so no hop waits idle through
    // the owner's query.
    let started = tokio::time::Instant::now();
    let mut first_chunk = loop {
        if started.elapsed() > local_limit {
            return Err(source.stalled("local step", local_limit));
        }
        match next_message(source, "local step", &mut local, stall, || true).await? {
            Some(c) if c.heartbeat => {
                source.traffic.received(c.encoded_len());
            }
            Some(c) => break c,
            None => return Err(source.bad("the local step sent nothing")),
        }
    };
    // The owner's tags on its list's length, one per party, each relayed to
    // the node it is for (which checks it; the coordinator cannot).
    if first_chunk.length_tags.len() != n {
        return Err(source.bad("the list's length tags do not match the parties"));
    }
    let mut tags = std::mem::take(&mut first_chunk.length_tags);
    let first_chunk_rows = first_chunk.total_rows;
    if route.is_empty() {
        // keyed-prf: the owner's tags are final; its length tags go to the
        // unmasker with the mask-sum request.
        let (masked, finals) = feed(
            source,
            first_chunk,
            local,
            None,
            split,
            encode::element_len(psi),
            stall,
            session,
            owner,
            width,
            &Announced(AtomicU64::new(u64::MAX)),
            received,
        )
        .await?;
        finished.inc(masked.len);
        return Ok(RingOutput {
            masked,
            finals,
            length_tags: tags,
        });
    }
    // One re-blind stream per hop, fed from a channel; `owed[k]` counts the
    // points queued for hop k (it owes them back).
    let mut senders = Vec::new();
    let mut replies = Vec::new();
    let owed: Vec<Arc<AtomicU64>> = route.iter().map(|_| Arc::default()).collect();
    for &hop in &route {
        let (tx, rx) = mpsc::channel::<ReblindChunk>(IN_FLIGHT);
        let p = &peers[hop];
        let reply = unary(
            p,
            "re-blind",
            stall,
            p.client.clone().reblind(ReceiverStream::new(rx)),
        )
        .await?;
        senders.push(tx);
        replies.push(reply);
    }
    let announced = Arc::new(Announced(AtomicU64::new(u64::MAX)));
    let mut stages: Vec<BoxFuture<'_, Result<Option<RingOutput>, CoordinatorError>>> = Vec::new();
    let mut senders = senders.into_iter();
    let Some(first) = senders.next() else {
        return Err(CoordinatorError::Protocol(ProtocolError::Violation(
            "a ring needs at least two parties".into(),
        )));
    };
    stages.push(Box::pin({
        let announced = announced.clone();
        let hop = Hop {
            peer: &peers[route[0]],
            tx: first,
            owed: owed[0].clone(),
            header: Some((first_chunk.total_rows, std::mem::take(&mut tags[route[0]]))),
        };
        async move {
            let (masked, _) = feed(
                source,
                first_chunk,
                local,
                Some(hop),
                split,
                POINT_LEN,
                stall,
                session,
                owner,
                width,
                &announced,
                received,
            )
            .await?;
            Ok(Some(RingOutput {
                masked,
                finals: None,
                length_tags: Vec::new(),
            }))
        }
    }));
    let last = route.len() - 1;
    for (k, reply) in replies.into_iter().enumerate() {
        let from = &peers[route[k]];
        let out_len = if k == last { TRUNCATED_LEN } else { POINT_LEN };
        // Hop k forwards to hop k + 1; the last hop's output stays here.
        let next = senders.next().map(|tx| Hop {
            peer: &peers[route[k + 1]],
            tx,
            owed: owed[k + 1].clone(),
            header: Some((first_chunk_rows, std::mem::take(&mut tags[route[k + 1]]))),
        });
        let announced = announced.clone();
        let mine = owed[k].clone();
        stages.push(Box::pin(async move {
            let finals = relay(
                from, reply, mine, out_len, next, split, stall, session, owner, &announced,
                finished,
            )
            .await?;
            Ok(finals.map(|finals| RingOutput {
                masked: MaskedList::default(),
                finals: Some(finals),
                length_tags: Vec::new(),
            }))
        }));
    }
    // The feed's output (masked values) and the last hop's (final points).
    let mut outs = try_join_all(stages).await?.into_iter().flatten();
    match (outs.next(), outs.next()) {
        (Some(mut first), Some(last)) => {
            first.finals = last.finals;
            Ok(first)
        }
        _ => Err(CoordinatorError::Protocol(ProtocolError::Violation(
            "the ring produced no final list".into(),
        ))),
    }
}

/// Reads the owner's local step: keeps masked values and dummies, checks
/// every size against the announced length, and forwards the elements
/// (`elem` bytes each) to the first hop, or, without a hop (keyed-prf),
/// splits them as the final list (under `split`), returned with the masked
/// list.
#[allow(clippy::too_many_arguments)]
async fn feed(
    source: &Peer,
    first_chunk: ListChunk,
    mut local: Streaming<ListChunk>,
    mut hop: Option<Hop<'_>>,
    split: &Split,
    elem: usize,
    stall: Duration,
    session: &SessionRef,
    owner: usize,
    width: usize,
    announced: &Announced,
    received: &ProgressBar,
) -> Result<(MaskedList, Option<FinalList>), CoordinatorError> {
    let mut list = MaskedList {
        width,
        ..MaskedList::default()
    };
    let mut finals = None;
    let mut rows = 0u64;
    let mut first = true;
    let mut pending = Some(first_chunk);
    loop {
        let chunk = match pending.take() {
            Some(c) => c,
            None => match next_message(source, "local step", &mut local, stall, || true).await? {
                Some(c) => c,
                None => break,
            },
        };
        source.traffic.received(chunk.encoded_len());
        if chunk.heartbeat {
            return Err(source.bad("a heartbeat after the list started"));
        }
        if first {
            if chunk.total_rows > MAX_LIST_ROWS {
                return Err(source.bad(format!("list longer than {MAX_LIST_ROWS} rows")));
            }
            list.len = chunk.total_rows;
            announced.0.store(chunk.total_rows, Ordering::SeqCst);
            if chunk.dummy_positions.len() as u64 > list.len {
                return Err(source.bad("more dummy positions than rows"));
            }
            list.dummies = chunk.dummy_positions.clone();
            if hop.is_none() {
                finals = Some(
                    FinalList::new(split, elem, list.len).map_err(|e| source.bad(e.to_string()))?,
                );
            }
        } else if chunk.total_rows != list.len {
            return Err(source.bad("inconsistent list length"));
        } else if !chunk.dummy_positions.is_empty() || !chunk.length_tags.is_empty() {
            return Err(source.bad("dummy positions or length tags outside the first chunk"));
        }
        first = false;
        let k = chunk.points.len() / elem;
        if chunk.points.len() % elem != 0 || chunk.masked.len() != k * width || k > CHUNK_POINTS {
            return Err(source.bad("chunk sizes do not match the analysis"));
        }
        rows += k as u64;
        if rows > list.len {
            return Err(source.bad("list longer than announced"));
        }
        append_bounded(
            &mut list.values,
            &chunk.masked,
            (list.len as usize).saturating_mul(width),
        );
        received.inc(k as u64);
        match &mut hop {
            Some(hop) => {
                hop.send(session, owner, chunk.points, chunk.chunk_tag)
                    .await?
            }
            None => {
                if !chunk.chunk_tag.is_empty() {
                    return Err(source.bad("a chunk tag in a list that goes to no hop"));
                }
                if let Some(f) = &mut finals {
                    f.push(&chunk.points)
                        .map_err(|e| source.bad(e.to_string()))?;
                }
            }
        }
    }
    if rows != list.len {
        return Err(source.bad("list shorter than announced"));
    }
    let distinct: std::collections::HashSet<u64> = list.dummies.iter().copied().collect();
    if distinct.len() != list.dummies.len() || list.dummies.iter().any(|&d| d >= list.len) {
        return Err(source.bad("dummy positions must be distinct and inside the list"));
    }
    Ok((list, finals))
}

/// Reads one hop's re-blinded chunks and forwards them to the next hop, or,
/// after the last hop, splits them (under `split`) as the list's final
/// points.
#[allow(clippy::too_many_arguments)]
async fn relay(
    from: &Peer,
    mut reply: Streaming<PointChunk>,
    owed: Arc<AtomicU64>,
    out_len: usize,
    mut next: Option<Hop<'_>>,
    split: &Split,
    stall: Duration,
    session: &SessionRef,
    owner: usize,
    announced: &Announced,
    finished: &ProgressBar,
) -> Result<Option<FinalList>, CoordinatorError> {
    let mut finals: Option<FinalList> = None;
    // The final list, made when its first points arrive (or at the end, for
    // an empty list), sized by the announced length.
    let new_final = || {
        FinalList::new(split, out_len, announced.get().unwrap_or(0))
            .map_err(|e| from.bad(e.to_string()))
    };
    let mut rows = 0u64;
    let returned = AtomicU64::new(0);
    // The hop owes points it was sent, and, once it returned the whole
    // list, the end of its stream.
    let owes = || {
        let back = returned.load(Ordering::SeqCst);
        owed.load(Ordering::SeqCst) > back || announced.get() == Some(back)
    };
    while let Some(chunk) = next_message(from, "re-blind", &mut reply, stall, owes).await? {
        from.traffic.received(chunk.encoded_len());
        if chunk.points.len() % out_len != 0 || chunk.points.len() > CHUNK_POINTS * out_len {
            return Err(from.bad("re-blinded chunk is not a whole number of points, or too long"));
        }
        let k = (chunk.points.len() / out_len) as u64;
        rows += k;
        returned.store(rows, Ordering::SeqCst);
        // Stop reading a stream as soon as it exceeds the announced length.
        if announced.get().is_none_or(|len| rows > len) {
            return Err(from.bad("re-blinded list longer than announced"));
        }
        match &mut next {
            Some(hop) => {
                hop.send(session, owner, chunk.points, chunk.chunk_tag)
                    .await?
            }
            None => {
                let f = match &mut finals {
                    Some(f) => f,
                    None => finals.insert(new_final()?),
                };
                f.push(&chunk.points).map_err(|e| from.bad(e.to_string()))?;
                finished.inc(k);
            }
        }
    }
    if Some(rows) != announced.get() {
        return Err(from.bad(format!(
            "re-blinded {rows} points of a list of {} rows",
            announced.get().unwrap_or(0)
        )));
    }
    if next.is_some() {
        return Ok(None);
    }
    match finals {
        Some(f) => Ok(Some(f)),
        None => Ok(Some(new_final()?)),
    }
}
