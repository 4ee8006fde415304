//! Steps 2 and 3, streamed: one list from its owner's local step through
//! every hop of the blinding ring, chunk by chunk. Chunk `k` of a list can be
//! at hop 2 while chunk `k+1` is at hop 1; the coordinator keeps a list's
//! masked values and its final 16-byte points, and holds 32-byte points only
//! while forwarding them from one hop to the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cleanroom::protocol::{MAX_LIST_ROWS, MaskedList, ring};
use cleanroom::psi::{POINT_LEN, TRUNCATED_LEN};
use cleanroom_proto::v1::{LocalStepRequest, PointChunk, ReblindChunk, SessionRef};
use futures::future::{BoxFuture, try_join_all};
use indicatif::ProgressBar;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

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

/// What the coordinator keeps of one list after the ring.
pub(crate) struct RingOutput {
    /// Masked values, width, length, dummies.
    pub masked: MaskedList,
    /// The final (truncated) points, in list order.
    pub finals: Vec<u8>,
}

/// Streams list `owner` from its local step through its route.
pub(crate) async fn through_ring(
    peers: &[Peer],
    session: &SessionRef,
    owner: usize,
    width: usize,
    received: &ProgressBar,
    finished: &ProgressBar,
) -> Result<RingOutput, CoordinatorError> {
    let n = peers.len();
    let route = ring::route(owner, n);
    let source = &peers[owner];
    let local = source
        .client
        .clone()
        .local_step(LocalStepRequest {
            session: Some(session.clone()),
        })
        .await
        .map_err(source.fail("local step"))?
        .into_inner();
    // One re-blind stream per hop, fed from a channel.
    let mut senders = Vec::new();
    let mut replies = Vec::new();
    for &hop in &route {
        let (tx, rx) = mpsc::channel::<ReblindChunk>(IN_FLIGHT);
        let p = &peers[hop];
        let reply = p
            .client
            .clone()
            .reblind(ReceiverStream::new(rx))
            .await
            .map_err(p.fail("re-blind"))?
            .into_inner();
        senders.push(tx);
        replies.push(reply);
    }
    let announced = Arc::new(Announced(AtomicU64::new(u64::MAX)));
    let mut stages: Vec<BoxFuture<'_, Result<Option<RingOutput>, CoordinatorError>>> = Vec::new();
    let mut senders = senders.into_iter();
    let first = senders.next().expect("a ring has at least one hop");
    stages.push(Box::pin({
        let announced = announced.clone();
        let hop = &peers[route[0]];
        async move {
            let masked = feed(
                source, hop, local, first, session, owner, width, &announced, received,
            )
            .await?;
            Ok(Some(RingOutput {
                masked,
                finals: Vec::new(),
            }))
        }
    }));
    let last = route.len() - 1;
    for (k, reply) in replies.into_iter().enumerate() {
        let from = &peers[route[k]];
        let out_len = if k == last { TRUNCATED_LEN } else { POINT_LEN };
        let next = if k == last {
            None
        } else {
            Some((
                senders.next().expect("one sender per hop"),
                &peers[route[k + 1]],
            ))
        };
        let announced = announced.clone();
        stages.push(Box::pin(async move {
            let finals = relay(
                from, reply, out_len, next, session, owner, &announced, finished,
            )
            .await?;
            Ok(finals.map(|finals| RingOutput {
                masked: MaskedList::default(),
                finals,
            }))
        }));
    }
    let mut outs = try_join_all(stages).await?.into_iter().flatten();
    let mut first = outs.next().expect("the feed's output");
    first.finals = outs.next().expect("the last hop's output").finals;
    Ok(first)
}

/// Reads the owner's local step: keeps masked values and dummies, checks
/// every size against the announced length, forwards points to the first hop.
#[allow(clippy::too_many_arguments)]
async fn feed(
    source: &Peer,
    hop: &Peer,
    mut local: Streaming<cleanroom_proto::v1::ListChunk>,
    tx: mpsc::Sender<ReblindChunk>,
    session: &SessionRef,
    owner: usize,
    width: usize,
    announced: &Announced,
    received: &ProgressBar,
) -> Result<MaskedList, CoordinatorError> {
    let mut list = MaskedList {
        width,
        ..MaskedList::default()
    };
    let mut rows = 0u64;
    let mut first = true;
    while let Some(chunk) = local.message().await.map_err(source.fail("local step"))? {
        source.traffic.received(chunk.encoded_len());
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
        } else if chunk.total_rows != list.len {
            return Err(source.bad("inconsistent list length"));
        } else if !chunk.dummy_positions.is_empty() {
            return Err(source.bad("dummy positions outside the first chunk"));
        }
        first = false;
        let k = chunk.points.len() / POINT_LEN;
        if chunk.points.len() % POINT_LEN != 0 || chunk.masked.len() != k * width {
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
        let msg = ReblindChunk {
            session: Some(session.clone()),
            owner: owner as u32,
            points: chunk.points,
        };
        hop.traffic.sent(msg.encoded_len());
        if tx.send(msg).await.is_err() {
            return Err(closed_early(hop).await);
        }
    }
    if first {
        return Err(source.bad("the local step sent nothing"));
    }
    if rows != list.len {
        return Err(source.bad("list shorter than announced"));
    }
    let distinct: std::collections::HashSet<u64> = list.dummies.iter().copied().collect();
    if distinct.len() != list.dummies.len() || list.dummies.iter().any(|&d| d >= list.len) {
        return Err(source.bad("dummy positions must be distinct and inside the list"));
    }
    Ok(list)
}

/// Reads one hop's re-blinded chunks and forwards them to the next hop, or,
/// after the last hop, keeps them as the list's final points.
#[allow(clippy::too_many_arguments)]
async fn relay(
    from: &Peer,
    mut reply: Streaming<PointChunk>,
    out_len: usize,
    next: Option<(mpsc::Sender<ReblindChunk>, &Peer)>,
    session: &SessionRef,
    owner: usize,
    announced: &Announced,
    finished: &ProgressBar,
) -> Result<Option<Vec<u8>>, CoordinatorError> {
    let mut finals = Vec::new();
    let mut rows = 0u64;
    while let Some(chunk) = reply.message().await.map_err(from.fail("re-blind"))? {
        from.traffic.received(chunk.encoded_len());
        if chunk.points.len() % out_len != 0 {
            return Err(from.bad("re-blinded chunk is not a whole number of points"));
        }
        let k = (chunk.points.len() / out_len) as u64;
        rows += k;
        // Stop reading a stream as soon as it exceeds the announced length.
        if announced.get().is_none_or(|len| rows > len) {
            return Err(from.bad("re-blinded list longer than announced"));
        }
        match &next {
            Some((tx, to)) => {
                let msg = ReblindChunk {
                    session: Some(session.clone()),
                    owner: owner as u32,
                    points: chunk.points,
                };
                to.traffic.sent(msg.encoded_len());
                if tx.send(msg).await.is_err() {
                    return Err(closed_early(to).await);
                }
            }
            None => {
                let limit = announced.get().unwrap_or(0) as usize * out_len;
                append_bounded(&mut finals, &chunk.points, limit);
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
    Ok(next.is_none().then_some(finals))
}
