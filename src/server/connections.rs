//! Connection limits shared by the listeners: how many connections may be open at once, how
//! long a new one may take to send its first HTTP/2 (or TLS) bytes, how long one may sit with
//! no request, and an accept loop that backs off when the process is out of file descriptors
//! instead of spinning.
//!
//! Each listener is wrapped in an [`Incoming`] stream (handed to tonic's
//! `serve_with_incoming_shutdown`, or read by the metrics server) that registers every accepted
//! connection in a [`Pool`]. The pool is the one place that knows every open connection of its
//! listeners:
//!
//! - **At most `max` open.** A connection beyond the limit evicts the connection that has gone
//!   longest without a request (none in flight; one stalled in its handshake before any other),
//!   so an idle flood cannot lock out a fresh client or a health probe; when every connection
//!   has a request in flight the new one is closed instead. Accepting and then deciding (rather
//!   than leaving connections in the kernel's backlog) is what lets a newcomer displace an idle
//!   squatter.
//! - **Handshake deadline.** A connection that has not sent the 24-byte HTTP/2 preface and one
//!   frame header within the handshake timeout is closed (on TLS listeners: the client's first
//!   encrypted record, which follows its side of the handshake).
//! - **Idle timeout.** A connection with no request in flight and none started for the idle
//!   timeout is closed. Requests are seen by [`ActivityLayer`] through the connection's
//!   `ConnectInfo`; HTTP/2 PINGs (which the keepalive sends to find dead peers) do not count.
//! - **Accept errors.** EMFILE, ENFILE, ENOBUFS and ENOMEM make the loop sleep, 10 ms doubling
//!   to 1 s, and close the pool's longest-idle connection to free a descriptor. tonic's own
//!   accept loop retries such an error at once, forever, which pinned a core.
//!
//! A closed connection is closed by failing its next read or write; the task serving it is woken
//! at once, so the descriptor goes back within a scheduling round.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::time::Sleep;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{Body as HttpBody, Bytes};
use tonic::transport::server::{Connected, TlsConnectInfo};

/// The first back-off after an accept error.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off between accept attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The HTTP/2 client preface (24 bytes) and the header of the SETTINGS frame that must follow it.
const H2_PREFACE_AND_FRAME: u64 = 24 + 9;
/// A connection that has not completed its handshake this long after it was accepted is evicted
/// before any idle one.
const STALLED_HANDSHAKE_MS: u64 = 1000;
/// Accepts handled in one poll before the stream yields to other tasks.
const ACCEPT_BATCH: usize = 64;

/// The limits of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most connections open at once.
    pub max: usize,
    /// Time a new connection has to send its first HTTP/2 preface and frame (or TLS record).
    pub handshake_timeout: Duration,
    /// Time a connection may go without a request; `None`: never closed for idling.
    pub idle_timeout: Option<Duration>,
}

/// What a new connection must send before the handshake timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Plain HTTP/2: the 24-byte preface and a frame header.
    H2,
    /// TLS: a complete record of type application data (23), which a client sends only after
    /// its side of the handshake (TLS 1.3: its encrypted Finished; TLS 1.2: its first data).
    Tls,
    /// HTTP/1 (the metrics endpoint): one byte of request; reads also count as activity, as
    /// there is no request layer to see requests.
    Http1,
}

/// Counters of one pool (for logs and tests).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections accepted and registered.
    pub accepted: AtomicU64,
    /// Connections closed at accept: the pool was full and every connection was busy.
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one or to free a descriptor.
    pub evicted: AtomicU64,
    /// Connections closed by the handshake timeout.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// Accept errors that made the loop back off.
    pub accept_errors: AtomicU64,
}

/// The connections of one or more listeners and their limits.
#[derive(Clone)]
pub struct Pool(Arc<PoolInner>);

struct PoolInner {
    name: &'static str,
    limits: PoolLimits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    stats: PoolStats,
    /// Milliseconds since `epoch` of the last warning, so that a flood logs a line a second.
    warned_ms: AtomicU64,
}

/// One connection's state, shared by its IO, the request layer and the pool.
#[derive(Debug)]
struct Conn {
    id: u64,
    epoch: Instant,
    accepted_ms: u64,
    last_activity_ms: AtomicU64,
    in_flight: AtomicUsize,
    handshaken: AtomicBool,
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every await-free step, so a panic elsewhere while
    // holding the lock does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Conn {
    fn touch(&self) {
        self.last_activity_ms
            .store(millis_since(self.epoch), Ordering::Relaxed);
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Marks the connection closed and wakes the task serving it, whose next read or write
    /// fails.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Remembers who to wake on [`Conn::close`]; true when it is closed already.
    fn register(&self, cx: &Context<'_>) -> bool {
        {
            let mut waker = lock(&self.waker);
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        self.is_closed()
    }
}

/// The metrics read a pool through its counts (`metrics` sits below the listeners).
impl crate::metrics::ConnectionSource for Pool {
    fn name(&self) -> &'static str {
        Pool::name(self)
    }

    fn counts(&self) -> crate::metrics::ConnectionCounts {
        let stats = self.stats();
        let total = |n: &AtomicU64| n.load(Ordering::Relaxed);
        crate::metrics::ConnectionCounts {
            open: self.open(),
            evicted: total(&stats.evicted),
            refused: total(&stats.refused),
            handshake_timeouts: total(&stats.handshake_timeouts),
            idle_closed: total(&stats.idle_closed),
            accept_errors: total(&stats.accept_errors),
        }
    }
}

impl Pool {
    /// An empty pool; `name` appears in its log lines.
    pub fn new(name: &'static str, limits: PoolLimits) -> Pool {
        Pool(Arc::new(PoolInner {
            name,
            limits: PoolLimits {
                max: limits.max.max(1),
                ..limits
            },
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            stats: PoolStats::default(),
            warned_ms: AtomicU64::new(0),
        }))
    }

    /// The pool's name (`api`, `health`, `metrics`).
    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// The pool's limits.
    pub fn limits(&self) -> PoolLimits {
        self.0.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.0.open).len()
    }

    /// The pool's counters.
    pub fn stats(&self) -> &PoolStats {
        &self.0.stats
    }

    fn now_ms(&self) -> u64 {
        millis_since(self.0.epoch)
    }

    /// Logs at most one warning a second.
    fn warn(&self, what: &str) {
        let now = self.now_ms();
        let last = self.0.warned_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .0
                .warned_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let stats = &self.0.stats;
            tracing::warn!(
                listener = self.0.name,
                open = self.open(),
                max = self.0.limits.max,
                evicted = stats.evicted.load(Ordering::Relaxed),
                refused = stats.refused.load(Ordering::Relaxed),
                accept_errors = stats.accept_errors.load(Ordering::Relaxed),
                "{what}"
            );
        }
    }

    /// Closes the idle connection that has gone longest without a request, one stalled in its
    /// handshake first (a brand-new connection that has not yet been read is not stalled);
    /// false when every connection has a request in flight.
    fn evict_one(&self, open: &mut HashMap<u64, Arc<Conn>>) -> bool {
        let now = self.now_ms();
        let victim = open
            .values()
            .filter(|c| c.is_idle())
            .min_by_key(|c| {
                // Stalled in its handshake for a second: not a client still connecting.
                let stalled = !c.handshaken.load(Ordering::Acquire)
                    && now.saturating_sub(c.accepted_ms) >= STALLED_HANDSHAKE_MS;
                (!stalled, c.last_activity_ms.load(Ordering::Relaxed))
            })
            .map(|c| c.id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(conn) => {
                conn.close();
                self.0.stats.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Registers a new connection, making room by evicting the longest-idle one when the pool
    /// is full; `None` when it is full of busy connections (the caller closes the new one).
    fn admit(&self) -> Option<Registered> {
        let mut open = lock(&self.0.open);
        if open.len() >= self.0.limits.max {
            let evicted = self.evict_one(&mut open);
            drop(open);
            if !evicted {
                self.0.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.warn("connection limit reached and every connection is busy: new connections are closed");
                return None;
            }
            self.warn("connection limit reached: the longest-idle connections make room");
            open = lock(&self.0.open);
        }
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            id: self.0.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.0.epoch,
            accepted_ms: now,
            last_activity_ms: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
            handshaken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        open.insert(conn.id, Arc::clone(&conn));
        self.0.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Registered {
            pool: self.clone(),
            conn,
        })
    }

    /// Closes connections past the handshake deadline or idle for too long.
    pub fn reap(&self) {
        let now = self.now_ms();
        let limits = self.0.limits;
        let handshake_ms = u64::try_from(limits.handshake_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle_ms = limits
            .idle_timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let (mut slow, mut idle) = (0, 0);
        lock(&self.0.open).retain(|_, conn| {
            if !conn.handshaken.load(Ordering::Acquire) {
                if now.saturating_sub(conn.accepted_ms) >= handshake_ms {
                    conn.close();
                    slow += 1;
                    return false;
                }
                return true;
            }
            if let Some(idle_ms) = idle_ms {
                let last = conn.last_activity_ms.load(Ordering::Relaxed);
                if conn.is_idle() && now.saturating_sub(last) >= idle_ms {
                    conn.close();
                    idle += 1;
                    return false;
                }
            }
            true
        });
        let stats = &self.0.stats;
        stats.handshake_timeouts.fetch_add(slow, Ordering::Relaxed);
        stats.idle_closed.fetch_add(idle, Ordering::Relaxed);
        if slow > 0 || idle > 0 {
            tracing::debug!(
                listener = self.0.name,
                handshake_timeouts = slow,
                idle = idle,
                "closed connections"
            );
        }
    }

    /// Runs [`Pool::reap`] a few times per timeout until `stop` turns true.
    pub async fn reap_until(self, mut stop: watch::Receiver<bool>) {
        let shortest = self
            .0
            .limits
            .idle_timeout
            .map_or(self.0.limits.handshake_timeout, |idle| {
                idle.min(self.0.limits.handshake_timeout)
            });
        let tick = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => self.reap(),
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }
}

/// A connection's place in its pool; leaving it (dropping the IO) frees the place.
struct Registered {
    pool: Pool,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut open = lock(&self.pool.0.open);
        if open
            .get(&self.conn.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
        {
            open.remove(&self.conn.id);
        }
    }
}

/// Follows what a new connection has sent until its handshake is complete.
#[derive(Debug)]
enum HandshakeProgress {
    /// Bytes read so far and bytes needed.
    Bytes {
        read: u64,
        need: u64,
    },
    /// TLS records: the header being read and the payload bytes still to skip.
    Tls {
        header: [u8; 5],
        filled: usize,
        skip: usize,
    },
    Done,
}

impl HandshakeProgress {
    fn new(handshake: Handshake) -> HandshakeProgress {
        match handshake {
            Handshake::H2 => HandshakeProgress::Bytes {
                read: 0,
                need: H2_PREFACE_AND_FRAME,
            },
            Handshake::Http1 => HandshakeProgress::Bytes { read: 0, need: 1 },
            Handshake::Tls => HandshakeProgress::Tls {
                header: [0; 5],
                filled: 0,
                skip: 0,
            },
        }
    }

    /// Takes the next bytes read; true once the handshake is complete.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        match self {
            HandshakeProgress::Done => return true,
            HandshakeProgress::Bytes { read, need } => {
                *read = read.saturating_add(bytes.len() as u64);
                if *read >= *need {
                    *self = HandshakeProgress::Done;
                }
            }
            HandshakeProgress::Tls {
                header,
                filled,
                skip,
            } => {
                while !bytes.is_empty() {
                    if *skip > 0 {
                        let n = (*skip).min(bytes.len());
                        *skip -= n;
                        bytes = &bytes[n..];
                        continue;
                    }
                    let n = (header.len() - *filled).min(bytes.len());
                    header[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled == header.len() {
                        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
                        if header[0] == 23 {
                            // Its payload may still be on its way; the client has finished
                            // its side of the handshake either way.
                            *self = HandshakeProgress::Done;
                            return true;
                        }
                        *filled = 0;
                        *skip = length;
                    }
                }
            }
        }
        matches!(self, HandshakeProgress::Done)
    }
}

/// A connection's IO: counts its handshake, fails once the pool closed it, and gives its place
/// back when dropped.
pub struct Tracked<IO> {
    io: IO,
    registered: Registered,
    progress: HandshakeProgress,
    io_activity: bool,
    remote: Option<SocketAddr>,
}

/// What tonic puts in every request's extensions for a [`Tracked`] connection (see
/// [`ActivityLayer`]).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    conn: Arc<Conn>,
    remote: Option<SocketAddr>,
}

impl ConnInfo {
    /// The peer's address (TCP).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed by the connection limits",
    )
}

impl<IO> Tracked<IO> {
    fn new(
        io: IO,
        registered: Registered,
        handshake: Handshake,
        remote: Option<SocketAddr>,
    ) -> Self {
        Tracked {
            io,
            registered,
            progress: HandshakeProgress::new(handshake),
            io_activity: handshake == Handshake::Http1,
            remote,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let conn = &this.registered.conn;
        if conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if !matches!(this.progress, HandshakeProgress::Done) && this.progress.feed(new)
                    {
                        conn.handshaken.store(true, Ordering::Release);
                    }
                    if this.io_activity {
                        conn.touch();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Registered after the read is pending, checked once more: a close in between is
            // seen here, a later one wakes this task.
            Poll::Pending if conn.register(cx) => Poll::Ready(Err(closed_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.registered.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.registered.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO> Connected for Tracked<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            conn: Arc::clone(&self.registered.conn),
            remote: self.remote,
        }
    }
}

/// A listener [`Incoming`] accepts from.
pub trait Acceptor: Unpin + Send + 'static {
    /// The accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>>;
}

impl Acceptor for TcpListener {
    type Io = tokio::net::TcpStream;

    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>> {
        let (stream, addr) = ready!(TcpListener::poll_accept(self, cx))?;
        // Small answers go out at once (as tonic's own incoming does).
        let _ = stream.set_nodelay(true);
        Poll::Ready(Ok((stream, Some(addr))))
    }
}

impl Acceptor for UnixListener {
    type Io = tokio::net::UnixStream;

    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>> {
        let (stream, _) = ready!(UnixListener::poll_accept(self, cx))?;
        Poll::Ready(Ok((stream, None)))
    }
}

/// Whether an accept error means the process (or system) is out of descriptors or buffers:
/// retrying at once cannot succeed and only burns CPU.
fn is_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// Whether an accept error concerns only the one connection (the peer gave up before it was
/// accepted): the next accept may succeed at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A listener's accepted connections as a stream of [`Tracked`] IO, registered in a [`Pool`].
/// It never yields an error: accept errors are handled here (see the module documentation).
pub struct Incoming<A> {
    acceptor: A,
    pool: Pool,
    handshake: Handshake,
    backoff: Option<Pin<Box<Sleep>>>,
    delay: Duration,
}

impl<A: Acceptor> Incoming<A> {
    /// Accepts from `acceptor` into `pool`; new connections must complete `handshake`.
    pub fn new(acceptor: A, pool: Pool, handshake: Handshake) -> Self {
        Incoming {
            acceptor,
            pool,
            handshake,
            backoff: None,
            delay: FIRST_BACKOFF,
        }
    }
}

impl<A: Acceptor> tokio_stream::Stream for Incoming<A> {
    type Item = Result<Tracked<A::Io>, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(sleep) = this.backoff.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.backoff = None;
        }
        for _ in 0..ACCEPT_BATCH {
            match ready!(this.acceptor.poll_accept(cx)) {
                Ok((io, remote)) => {
                    this.delay = FIRST_BACKOFF;
                    if let Some(registered) = this.pool.admit() {
                        return Poll::Ready(Some(Ok(Tracked::new(
                            io,
                            registered,
                            this.handshake,
                            remote,
                        ))));
                    }
                    // Refused: dropping it closes it.
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    this.pool
                        .0
                        .stats
                        .accept_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if is_exhaustion(&e) {
                        // One descriptor back for the next accept (a fresh client's).
                        let mut open = lock(&this.pool.0.open);
                        this.pool.evict_one(&mut open);
                    }
                    this.pool.warn(&format!(
                        "accept failed ({e}); backing off {} ms",
                        this.delay.as_millis()
                    ));
                    let mut sleep = Box::pin(tokio::time::sleep(this.delay));
                    this.delay = (this.delay * 2).min(MAX_BACKOFF);
                    if sleep.as_mut().poll(cx).is_pending() {
                        this.backoff = Some(sleep);
                        return Poll::Pending;
                    }
                }
            }
        }
        // A long run of refused connections: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The file descriptors this process may open, after raising the soft limit to the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub soft_before: Option<u64>,
    /// The soft limit now (`None`: unlimited or unknown).
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a container runtime's soft 1024 is far
/// below what a sidecar under load needs) and logs both.
pub fn raise_fd_limit() -> FdLimit {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut now = before;
    if before.current != before.maximum {
        let raised = rustix::process::Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => now = getrlimit(Resource::Nofile),
            Err(e) => {
                tracing::warn!(error = %e, soft = ?before.current, hard = ?before.maximum, "cannot raise the open-files limit");
            }
        }
    }
    let limit = FdLimit {
        soft_before: before.current,
        soft: now.current,
        hard: now.maximum,
    };
    let shown = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    tracing::info!(
        soft_before = %shown(limit.soft_before),
        soft = %shown(limit.soft),
        hard = %shown(limit.hard),
        "open-files limit"
    );
    limit
}

/// Marks a connection busy from a request's start until its response body ends (or is dropped).
struct InFlight(Arc<Conn>);

impl InFlight {
    fn begin(conn: &Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.touch();
        InFlight(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tower layer that tells the pool which connections have requests in flight (the idle
/// timeout and eviction spare those). Requests on connections not from an [`Incoming`] pass
/// through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = Activity<S>;

    fn layer(&self, inner: S) -> Activity<S> {
        Activity { inner }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Activity<S> {
    inner: S,
}

fn conn_of<B>(request: &Request<B>) -> Option<&Arc<Conn>> {
    let extensions = request.extensions();
    extensions
        .get::<ConnInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .map(|info| &info.conn)
}

impl<S, B, R> tower::Service<Request<B>> for Activity<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Unpin,
    R: HttpBody<Data = Bytes> + Unpin,
{
    type Response = Response<Guarded<R>>;
    type Error = S::Error;
    type Future = InFlightResponse<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let guard = conn_of(&request).map(InFlight::begin);
        InFlightResponse {
            response: self.inner.call(request),
            guard,
        }
    }
}

/// The response future of [`Activity`]: the inner service's, handing the connection's mark
/// on to the response body. A named future rather than a boxed `async` block: this runs for
/// every request, and the box and a second boxed body were a measurable share of an ext_authz
/// Check (BENCHMARKS.md).
pub struct InFlightResponse<F> {
    response: F,
    guard: Option<InFlight>,
}

impl<F, R, E> Future for InFlightResponse<F>
where
    F: Future<Output = Result<Response<R>, E>> + Unpin,
{
    type Output = Result<Response<Guarded<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = ready!(Pin::new(&mut this.response).poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| Guarded {
            body,
            _guard: guard,
        })))
    }
}

/// A response body that keeps its connection marked busy until it ends (a server stream
/// such as health `Watch` is a request in flight for as long as it runs).
pub struct Guarded<R> {
    body: R,
    _guard: Option<InFlight>,
}

impl<R: HttpBody + Unpin> HttpBody for Guarded<R> {
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    fn limits(max: usize) -> PoolLimits {
        PoolLimits {
            max,
            handshake_timeout: Duration::from_millis(200),
            idle_timeout: Some(Duration::from_millis(400)),
        }
    }

    #[test]
    fn the_tls_handshake_is_complete_at_the_first_application_data_record() {
        let mut progress = HandshakeProgress::new(Handshake::Tls);
        // A ClientHello record of 3 bytes' payload, then a ChangeCipherSpec, fed byte by byte.
        let records = [22, 3, 1, 0, 3, 1, 2, 3, 20, 3, 3, 0, 1, 1];
        for byte in records {
            assert!(!progress.feed(&[byte]));
        }
        assert!(!progress.feed(&[23, 3, 3, 0]));
        assert!(progress.feed(&[40]));
        // An application-data type byte inside a payload does not count.
        let mut progress = HandshakeProgress::new(Handshake::Tls);
        assert!(!progress.feed(&[22, 3, 1, 0, 2, 23, 23]));
        assert!(progress.feed(&[23, 3, 3, 0, 1]));
    }

    #[test]
    fn the_h2_handshake_needs_the_preface_and_a_frame_header() {
        let mut progress = HandshakeProgress::new(Handshake::H2);
        assert!(!progress.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!progress.feed(&[0; 8]));
        assert!(progress.feed(&[4]));
    }

    async fn pair(pool: &Pool) -> (Tracked<tokio::net::TcpStream>, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut incoming = Incoming::new(listener, pool.clone(), Handshake::H2);
        let server = incoming.next().await.unwrap().unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn a_full_pool_evicts_its_longest_idle_connection_and_spares_busy_ones() {
        let pool = Pool::new("test", limits(2));
        let (mut first, _c1) = pair(&pool).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (second, _c2) = pair(&pool).await;
        let busy = InFlight::begin(&second.registered.conn);
        let (third, _c3) = pair(&pool).await;
        assert_eq!(pool.open(), 2);
        assert_eq!(pool.stats().evicted.load(Ordering::Relaxed), 1);
        // The evicted connection's next read fails; the busy one is still registered.
        let mut buf = [0; 1];
        assert_eq!(
            first.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
        drop(first);
        assert!(!second.registered.conn.is_closed());
        // Every connection busy: the next one is refused, nothing is evicted.
        let third_busy = InFlight::begin(&third.registered.conn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut incoming = Incoming::new(listener, pool.clone(), Handshake::H2);
        let accepted = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(accepted.is_err(), "nothing is handed out");
        assert_eq!(pool.stats().refused.load(Ordering::Relaxed), 1);
        assert_eq!(client.read(&mut buf).await.unwrap_or(0), 0, "closed");
        drop((busy, third_busy));
    }

    #[tokio::test]
    async fn a_connection_stalled_in_its_handshake_is_evicted_before_an_older_idle_one() {
        let pool = Pool::new(
            "test",
            PoolLimits {
                handshake_timeout: Duration::from_secs(10),
                ..limits(2)
            },
        );
        let (older, _c1) = pair(&pool).await;
        older
            .registered
            .conn
            .handshaken
            .store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (silent, _c2) = pair(&pool).await;
        // Still connecting: the older idle connection goes.
        let (newer, _c3) = pair(&pool).await;
        assert!(older.registered.conn.is_closed());
        assert!(!silent.registered.conn.is_closed());
        // Stalled for a second: it goes before the newer idle one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        newer
            .registered
            .conn
            .handshaken
            .store(true, Ordering::Release);
        let (_newest, _c4) = pair(&pool).await;
        assert!(silent.registered.conn.is_closed());
        assert!(!newer.registered.conn.is_closed());
    }

    /// A listener whose every accept fails with EMFILE.
    struct OutOfDescriptors(Arc<AtomicUsize>);

    impl Acceptor for OutOfDescriptors {
        type Io = tokio::net::TcpStream;

        fn poll_accept(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<io::Result<(Self::Io, Option<SocketAddr>)>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            let emfile = rustix::io::Errno::MFILE.raw_os_error();
            Poll::Ready(Err(io::Error::from_raw_os_error(emfile)))
        }
    }

    #[tokio::test]
    async fn out_of_descriptors_the_accept_loop_backs_off_and_frees_an_idle_one() {
        let pool = Pool::new("test", limits(4));
        let (_idle, _client) = pair(&pool).await;
        let polls = Arc::new(AtomicUsize::new(0));
        let mut incoming = Incoming::new(
            OutOfDescriptors(Arc::clone(&polls)),
            pool.clone(),
            Handshake::H2,
        );
        let waited = tokio::time::timeout(Duration::from_millis(1000), incoming.next()).await;
        assert!(
            waited.is_err(),
            "no connection, no error handed to the server"
        );
        // 10, 20, 40, ... ms apart: about 7 attempts in a second, not millions.
        let polls = polls.load(Ordering::Relaxed);
        assert!((5..=10).contains(&polls), "{polls} accept attempts");
        assert_eq!(
            pool.stats().accept_errors.load(Ordering::Relaxed),
            polls as u64
        );
        assert_eq!(pool.stats().evicted.load(Ordering::Relaxed), 1);
        assert_eq!(
            pool.open(),
            0,
            "the idle connection gave its descriptor back"
        );
    }

    #[tokio::test]
    async fn a_wakeful_reader_is_woken_when_its_connection_is_closed() {
        let pool = Pool::new("test", limits(1));
        let (mut server, _client) = pair(&pool).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0; 8];
            server.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_newer, _c) = pair(&pool).await;
        let read = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn silent_connections_miss_the_handshake_and_idle_ones_the_idle_timeout() {
        let pool = Pool::new("test", limits(8));
        let (mut silent, _c1) = pair(&pool).await;
        let (mut talker, mut c2) = pair(&pool).await;
        c2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut buf = [0; 64];
        let mut read = 0;
        while read < 33 {
            read += talker.read(&mut buf).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        pool.reap();
        assert_eq!(pool.stats().handshake_timeouts.load(Ordering::Relaxed), 1);
        assert!(silent.read(&mut buf).await.is_err());
        assert_eq!(pool.open(), 1, "the talker handshook in time");
        // A request in flight keeps it; once it ends, the idle timeout runs from then.
        let request = InFlight::begin(&talker.registered.conn);
        tokio::time::sleep(Duration::from_millis(450)).await;
        pool.reap();
        assert_eq!(pool.open(), 1);
        drop(request);
        pool.reap();
        assert_eq!(pool.open(), 1, "idle from the end of its last request");
        tokio::time::sleep(Duration::from_millis(450)).await;
        pool.reap();
        assert_eq!(pool.open(), 0);
        assert_eq!(pool.stats().idle_closed.load(Ordering::Relaxed), 1);
    }
}
